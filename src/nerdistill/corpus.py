"""The raw corpus annotate reads: a `.txt` file (one phrase a line) or a `.jsonl` one (a `text`
field, an optional `id`), with what was left out and why."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from nerdistill.io import InputError, read_jsonl, utf8_lines


@dataclass(frozen=True)
class Phrase:
    id: str
    text: str
    line_no: int


@dataclass
class Corpus:
    """The phrases of a raw corpus and what was left out, and why."""
    phrases: list[Phrase]
    blank_lines: int
    too_long: list[int]  # line numbers

    @property
    def skipped_fraction(self) -> float:
        return len(self.too_long) / max(1, len(self.too_long) + len(self.phrases))


def read_corpus(path: str | Path, max_line_chars: int) -> Corpus:
    """A `.txt` corpus (one phrase a line) or a `.jsonl` one (a `text` field, an optional `id`).

    Blank lines are skipped and counted; lines over `max_line_chars` characters are skipped and
    their line numbers kept for the report. Bad bytes, malformed JSON and corpora without any
    phrase raise InputError with the file, the line and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: corpus not found; pass --corpus a .txt or .jsonl file")
    if path.suffix == ".txt":
        lines = _text_lines(path)
    elif path.suffix == ".jsonl":
        lines = _jsonl_lines(path)
    else:
        raise InputError(f"{path}: unsupported corpus format {path.suffix!r}; use .txt (one phrase a line) "
                         "or .jsonl (one {\"text\": ...} object a line)")
    corpus = Corpus(phrases=[], blank_lines=0, too_long=[])
    seen: dict[str, int] = {}
    for line_no, phrase_id, text in lines:
        text = text.strip()
        if not text:
            corpus.blank_lines += 1
        elif len(text) > max_line_chars:
            corpus.too_long.append(line_no)
        else:
            if phrase_id in seen:
                raise InputError(f"{path}:{line_no}: id {phrase_id!r} already used on line {seen[phrase_id]}; "
                                 "ids must be unique")
            seen[phrase_id] = line_no
            corpus.phrases.append(Phrase(phrase_id, text, line_no))
    if not corpus.phrases:
        raise InputError(f"{path}: no phrase to annotate ({corpus.blank_lines} blank lines, "
                         f"{len(corpus.too_long)} over annotate.max_line_chars={max_line_chars}); "
                         "give a corpus with one phrase a line")
    return corpus


def _text_lines(path: Path) -> Iterator[tuple[int, str, str]]:
    for line_no, line in utf8_lines(path):
        yield line_no, str(line_no), line


def _jsonl_lines(path: Path) -> Iterator[tuple[int, str, str]]:
    for line_no, obj in read_jsonl(path):
        text = obj.get("text")
        if not isinstance(text, str):
            raise InputError(f"{path}:{line_no}: each object needs a string 'text' field, got {type(text).__name__}")
        phrase_id = obj.get("id", line_no)
        if not isinstance(phrase_id, (str, int)) or isinstance(phrase_id, bool):
            raise InputError(f"{path}:{line_no}: 'id' must be a string or an integer, got {phrase_id!r}")
        yield line_no, str(phrase_id), text
