"""File streaming for `nerdistill predict`: a `.txt` or `.jsonl` file, or stdin, tagged into JSONL.

Lines are read by `io.numbered_lines` and tagged a chunk at a time, so memory does not grow with
the input, and a line that cannot be read becomes an error record in the output instead of
stopping the stream. The tagging itself is `tagger.core.NerTagger`'s.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from tqdm.auto import tqdm

from nerdistill.io import InputError, NumberedLine, atomic_path, check_writable, numbered_lines
from nerdistill.tagger.core import NerTagger
from nerdistill.tagger.load import load_tagger

log = logging.getLogger(__name__)

SNIFF = "sniff"  # stdin with --format auto: decided on its first lines


def predict_stream(tagger: NerTagger, input_path: str | Path, output_path: str | Path, batch_size: int = 32,
                   input_format: str = "auto", chunk_lines: int = 1024) -> dict[str, int]:
    """Tag a `.txt` (one text a line) or `.jsonl` (`text`, optional `id` carried through) file, or `-`
    for stdin (`input_format` auto: JSONL when its first non-blank line is a JSON object), into JSONL `{"text", "entities", ["id"]}` on
    `output_path` (`-` for stdout; a file is replaced atomically once every line is written).

    Streams `chunk_lines` lines at a time. One output line per input line: a blank line gives
    `{"text": "", "entities": []}`; a line that is not UTF-8, not a JSON object or has no string
    `text` gives `{"line": N, "error": "..."}` and is logged with its line number. Returns counts
    (`lines`, `tagged`, `empty`, `failed`, `entities`, and `long_words_cut`: words longer than the
    model's window, cut to it); the CLI exits non-zero when `failed` > 0.
    """
    fmt = _input_format(input_path, input_format)
    counts: Counter[str] = Counter(lines=0, tagged=0, empty=0, failed=0, entities=0)
    cut_before = tagger.words.words_cut  # the tagger's count runs over its whole life
    progress = tqdm(desc="predict", unit="line", disable=not sys.stderr.isatty())
    with _open_input(input_path) as source, _open_output(output_path) as sink:
        for chunk in _chunks(numbered_lines(source), chunk_lines):
            if fmt == SNIFF:
                fmt = _sniff(chunk)
                log.info("%s: read as %s (--format to say otherwise)", input_path, fmt)
            parsed = [_parse_line(line, fmt, input_path) for line in chunk]
            texts = [row["text"] for row in parsed if "error" not in row and row["text"]]
            found = iter(tagger(texts, batch_size=batch_size))
            for row in parsed:
                _count(counts, row)
                if "error" not in row:
                    row["entities"] = next(found) if row["text"] else []
                    counts["entities"] += len(row["entities"])
                sink.write(json.dumps(row, ensure_ascii=False) + "\n")
            sink.flush()
            progress.update(len(chunk))
    progress.close()
    counts["long_words_cut"] = tagger.words.words_cut - cut_before
    if counts["failed"]:
        log.error("%s: %d of %d lines could not be read (error records written in their place)",
                  input_path, counts["failed"], counts["lines"])
    return dict(counts)


def _input_format(input_path: str | Path, input_format: str) -> str:
    if input_format not in ("auto", "txt", "jsonl"):
        raise InputError(f"input format {input_format!r}: use auto, txt or jsonl")
    if input_format != "auto":
        return input_format
    if str(input_path) == "-":
        return SNIFF
    suffix = Path(input_path).suffix
    if suffix not in (".txt", ".jsonl"):
        raise InputError(f"{input_path}: unknown input format {suffix!r}; use .txt (one text a line) or .jsonl "
                         "(one {\"text\": ...} object a line)")
    return suffix[1:]


def _sniff(chunk: list[NumberedLine]) -> str:
    """jsonl when the first non-blank line parses as a JSON object, else txt (also when it is not UTF-8)."""
    first = next((text for _, text, _ in chunk if text is None or text.strip()), "")
    if first is None:
        return "txt"
    try:
        return "jsonl" if isinstance(json.loads(first), dict) else "txt"
    except json.JSONDecodeError:
        return "txt"


@contextlib.contextmanager
def _open_input(path: str | Path) -> Iterator[BinaryIO]:
    """Binary lines of a file, or of stdin (left open)."""
    if str(path) == "-":
        yield sys.stdin.buffer
        return
    if not Path(path).is_file():
        raise InputError(f"{path}: input file not found")
    with Path(path).open("rb") as handle:
        yield handle


@contextlib.contextmanager
def _open_output(path: str | Path) -> Iterator[TextIO]:
    """stdout, or a temp file that replaces `path` only when every line is written."""
    if str(path) == "-":
        yield sys.stdout
        return
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as handle:
        yield handle


def _chunks(lines: Iterable[NumberedLine], size: int) -> Iterator[list[NumberedLine]]:
    chunk: list[NumberedLine] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _parse_line(numbered: NumberedLine, fmt: str, input_path: str | Path) -> dict[str, Any]:
    """`{"text", ["id"]}` of an input line, or `{"line", "error"}` (logged) when it cannot be read."""
    line_no, line, error = numbered
    if line is None:
        return _error(input_path, line_no, f"{error}; re-encode the input as UTF-8")
    if fmt == "txt":
        return {"text": line}
    if not line.strip():
        return {"text": ""}
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        return _error(input_path, line_no, f"malformed JSON ({err.msg} at column {err.colno})")
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        return _error(input_path, line_no, "expected a JSON object with a string 'text' field")
    return {"id": obj["id"], "text": obj["text"]} if "id" in obj else {"text": obj["text"]}


def _error(input_path: str | Path, line_no: int, message: str) -> dict[str, Any]:
    log.warning("%s:%d: %s", input_path, line_no, message)
    return {"line": line_no, "error": message}


def _count(counts: Counter[str], row: dict[str, Any]) -> None:
    counts["lines"] += 1
    if "error" in row:
        counts["failed"] += 1
    elif row["text"]:
        counts["tagged"] += 1
    else:
        counts["empty"] += 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("One output line per input line. A line that is not UTF-8 or not a JSON object with a string "
                     "'text' gives {\"line\": N, \"error\": ...} in its place, a warning with its number, and exit "
                     "status 1 at the end. The output file is written whole or not at all: on Ctrl-C or SIGTERM the "
                     "temp file is removed and the command exits 130 or 143.")
    # A str, not a Path: Path("./student") would drop the "./" that marks it as a local folder.
    parser.add_argument("--model", default="models/student_int8",
                        help="a student, ONNX export or teacher folder, or a hub id (default: %(default)s, the int8 "
                             "export the gate judged: what ships)")
    parser.add_argument("--input", default="-", help=".txt, .jsonl or - for stdin")
    parser.add_argument("--format", choices=("auto", "txt", "jsonl"), default="auto",
                        help="input format: auto = the file's suffix; for stdin, jsonl when the first non-blank line "
                             "is a JSON object, else txt (default: %(default)s)")
    parser.add_argument("--output", default="-", help=".jsonl or - for stdout")
    parser.add_argument("--batch-size", type=int, default=32)


def main(args: argparse.Namespace, params: None) -> int:
    """`nerdistill predict`: exit status 1 when a line could not be tagged."""
    if args.output != "-":
        check_writable(args.output)  # before the model loads, not after
    tagger = load_tagger(args.model, source="--model")
    counts = predict_stream(tagger, args.input, args.output, batch_size=args.batch_size, input_format=args.format)
    log.info("predict: %s", counts)
    return 1 if counts.get("failed", 0) else 0
