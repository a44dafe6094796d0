"""The raw corpus annotate reads: a `.txt` file (one phrase a line) or a `.jsonl` one (a `text`
field, an optional `id`), with what was left out and why.

A corpus is read twice and never held: `scan_corpus` reads every line once to pick the phrases to
annotate and count the others, keeping only their line numbers and a fixed-size digest of each text
(memory grows by tens of bytes a line, whatever the lines hold); `Corpus.phrases` reads them again.
"""
from __future__ import annotations

import hashlib
import logging
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nerdistill.io import InputError, read_jsonl, utf8_lines
from nerdistill.text import split_words

log = logging.getLogger(__name__)

SHOWN_LINES = 10  # line numbers of over-long lines kept for the report


@dataclass(frozen=True)
class Phrase:
    id: str
    text: str
    line_no: int


@dataclass
class Corpus:
    """Which lines of a raw corpus are phrases to annotate, and what was left out, and why.

    `kept`: line numbers of the phrases, in corpus order: the first of each exact text (a repeated
    line split at random would sit in train and test at once and inflate every test score) that
    holds at least one word. `read`: the lines within `max_line_chars` that were not blank.
    """
    path: Path
    max_line_chars: int
    kept: np.ndarray = field(repr=False)
    read: int = 0
    blank_lines: int = 0
    too_long: int = 0
    too_long_lines: list[int] = field(default_factory=list)  # the first SHOWN_LINES of them
    duplicates: int = 0
    no_words: int = 0

    @property
    def skipped_fraction(self) -> float:
        return self.too_long / max(1, self.too_long + self.read)

    def check_skipped(self, max_fraction: float) -> None:
        """Warn about lines skipped for their length; stop when more than `max_fraction` of them were."""
        if not self.too_long:
            return
        shown = ", ".join(map(str, self.too_long_lines)) + (" ..." if self.too_long > len(self.too_long_lines) else "")
        log.warning("%s: skipped %d lines over annotate.max_line_chars=%d (lines %s)",
                    self.path, self.too_long, self.max_line_chars, shown)
        if self.skipped_fraction > max_fraction:
            raise InputError(f"{self.path}: {self.too_long} lines ({self.skipped_fraction:.1%}) are over "
                             f"annotate.max_line_chars={self.max_line_chars} (lines {shown}), more than "
                             f"annotate.max_skipped_fraction={max_fraction}; split those documents into phrases "
                             "or raise annotate.max_line_chars")

    def phrases(self) -> Iterator[Phrase]:
        """The kept phrases, read again from the file, in corpus order."""
        wanted = map(int, self.kept)  # not .tolist(): a Python int a line would grow with the corpus
        next_line = next(wanted, None)
        for line_no, phrase_id, text in _lines(self.path):
            if next_line is None:
                return
            if line_no == next_line:
                yield Phrase(phrase_id, text.strip(), line_no)
                next_line = next(wanted, None)


def scan_corpus(path: str | Path, max_line_chars: int) -> Corpus:
    """Read a `.txt` corpus (one phrase a line) or a `.jsonl` one (a `text` field, an optional `id`)
    once, lazily: which lines to annotate, and what was left out.

    Blank lines are skipped and counted; lines over `max_line_chars` characters are skipped and
    counted (the first line numbers kept for the report); repeats of an earlier text and lines
    without a word (invisible characters only) are left out and counted. Bad bytes, malformed JSON,
    repeated ids and corpora without any phrase raise InputError with the file, the line and the fix.
    """
    path = Path(path)
    lines = _lines(path)
    kept, seen_texts = array("q"), set()
    seen_ids: dict[bytes, int] = {}
    corpus = Corpus(path, max_line_chars, kept=np.empty(0, dtype=np.int64))
    for line_no, phrase_id, text in lines:
        text = text.strip()
        if not text:
            corpus.blank_lines += 1
        elif len(text) > max_line_chars:
            corpus.too_long += 1
            if len(corpus.too_long_lines) < SHOWN_LINES:
                corpus.too_long_lines.append(line_no)
        else:
            corpus.read += 1
            if path.suffix == ".jsonl":  # a .txt line's id is its line number, unique by construction
                _check_new_id(path, line_no, phrase_id, seen_ids)
            text_digest = _digest(text)
            if text_digest in seen_texts:
                corpus.duplicates += 1
            elif not split_words(text):
                seen_texts.add(text_digest)
                corpus.no_words += 1
            else:
                seen_texts.add(text_digest)
                kept.append(line_no)
    if not corpus.read:
        raise InputError(f"{path}: no phrase to annotate ({corpus.blank_lines} blank lines, "
                         f"{corpus.too_long} over annotate.max_line_chars={max_line_chars}); "
                         "give a corpus with one phrase a line")
    if corpus.duplicates:
        log.info("%s: dropped %d repeated lines (exact duplicates of an earlier line)", path, corpus.duplicates)
    corpus.kept = np.frombuffer(kept, dtype=np.int64)
    return corpus


def _digest(text: str) -> bytes:
    # 16 bytes stand for a text of any length; two different lines colliding is a 2^-64 chance
    # even at billions of lines.
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def _check_new_id(path: Path, line_no: int, phrase_id: str, seen: dict[bytes, int]) -> None:
    first = seen.setdefault(_digest(phrase_id), line_no)
    if first != line_no:
        raise InputError(f"{path}:{line_no}: id {phrase_id!r} already used on line {first}; ids must be unique")


def _lines(path: Path) -> Iterator[tuple[int, str, str]]:
    """(line number, phrase id, text) of every line, lazily."""
    if not path.is_file():
        raise InputError(f"{path}: corpus not found; pass --corpus a .txt or .jsonl file")
    if path.suffix == ".txt":
        return _text_lines(path)
    if path.suffix == ".jsonl":
        return _jsonl_lines(path)
    raise InputError(f"{path}: unsupported corpus format {path.suffix!r}; use .txt (one phrase a line) "
                     "or .jsonl (one {\"text\": ...} object a line)")


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
