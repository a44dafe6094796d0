"""The contract between annotate and every later stage: what `data/annotated` holds.

One folder: `{train,val,test}.jsonl` (one record a line: `id`, `text`, `tokens`, `offsets`,
`ner_tags` in IOB2), `label2id.json` (the student's labels) and `transitions.json` (the teacher's
transition prior). Only this module spells those file names; readers check every record, whole
(`load_split`) or one at a time (`read_split`); training data reads them back by byte offset
(`line_starts`, `record_at`) rather than holding them. annotate appends records as they come.

`transitions.json`: `labels` (the student's, in label2id order), `start` (L), `end` (L) and
`transitions` (L x L, [previous][next]): add-one smoothed log-probabilities of the IOB2 moves the
teacher's per-word label distributions expect on the train split (`labels.expected_transition_counts`,
`labels.transition_prior`), `labels.IMPOSSIBLE` where IOB2 forbids the move. It is the CRF's
starting point (`distill.crf_init: prior`) and the target of the CRF loss.
"""
from __future__ import annotations

import contextlib
import json
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nerdistill.io import InputError, read_json, read_jsonl, write_json, write_jsonl
from nerdistill.labels import entity_types
from nerdistill.text import is_valid_iob2

SPLITS = ("train", "val", "test")
LABEL2ID = "label2id.json"
TRANSITIONS = "transitions.json"


@dataclass(frozen=True)
class AnnotatedDir:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def split_path(self, name: str) -> Path:
        if name not in SPLITS:
            raise ValueError(f"split {name!r}: one of {', '.join(SPLITS)}")
        return self.path / f"{name}.jsonl"

    @property
    def label2id_path(self) -> Path:
        return self.path / LABEL2ID

    @property
    def transitions_path(self) -> Path:
        return self.path / TRANSITIONS

    def label2id(self) -> dict[str, int]:
        return read_json(self.label2id_path)

    def transitions(self) -> dict[str, Any]:
        return read_json(self.transitions_path)

    def kept_types(self) -> set[str]:
        """The entity types the student keeps (annotate.drop_types are gone)."""
        return set(entity_types(self.label2id()))

    def split(self, name: str) -> list[dict[str, Any]]:
        return load_split(self.split_path(name), self.label2id())

    def records(self, name: str) -> Iterator[tuple[int, dict[str, Any]]]:
        """(line number, checked record) of each record of a split, read lazily."""
        return read_split(self.split_path(name), self.label2id())

    def write(self, splits: Mapping[str, Iterable[dict[str, Any]]], label2id: dict[str, int],
              transitions: dict[str, Any]) -> None:
        """Write every file into this folder, each split whole."""
        for name in SPLITS:
            write_jsonl(self.split_path(name), splits[name])
        self.write_labels(label2id, transitions)

    @contextlib.contextmanager
    def appender(self) -> Iterator[Callable[[str, dict[str, Any]], None]]:
        """`append(split, record)`: records land in their split's file as they come. For a staging
        folder that is swapped in whole (annotate's): the files are written in place, not through
        temp files of their own."""
        self.path.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            files = {name: stack.enter_context(self.split_path(name).open("w", encoding="utf-8")) for name in SPLITS}

            def append(name: str, record: dict[str, Any]) -> None:
                files[name].write(json.dumps(record, ensure_ascii=False) + "\n")  # io.write_jsonl's lines

            yield append

    def write_labels(self, label2id: dict[str, int], transitions: dict[str, Any]) -> None:
        write_json(self.label2id_path, label2id)
        write_json(self.transitions_path, transitions)


def load_split(path: str | Path, label2id: Mapping[str, int] | None = None) -> list[dict[str, Any]]:
    """Read an annotated split, checking every record; errors name file:line and the fix.

    Each record needs `tokens` and `ner_tags`, non-empty lists of strings of equal length, with
    IOB2 tags from `label2id` (by default the `label2id.json` written beside the split).
    """
    return [record for _, record in read_split(path, label2id)]


def read_split(path: str | Path, label2id: Mapping[str, int] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """`load_split`'s checked records, lazily, with their line numbers: memory for one record at a time."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: split not found; run `nerdistill annotate` first")
    if label2id is None:
        label2id = read_json(path.parent / LABEL2ID)
    return _checked_records(path, label2id)


def _checked_records(path: Path, label2id: Mapping[str, int]) -> Iterator[tuple[int, dict[str, Any]]]:
    empty = True
    for line_no, record in read_jsonl(path):
        empty = False
        yield line_no, _checked_record(path, line_no, record, label2id)
    if empty:
        raise InputError(f"{path}: no records; annotate a larger corpus")


def line_starts(path: str | Path) -> np.ndarray:
    """(lines,) int64: the byte offset where each line of `path` starts (line number n at index n - 1),
    so that `record_at` reads one record without reading the lines before it."""
    starts, offset = array("q"), 0
    with Path(path).open("rb") as handle:
        for raw in handle:
            starts.append(offset)
            offset += len(raw)
    return np.frombuffer(starts, dtype=np.int64)


def record_at(path: str | Path, offset: int) -> dict[str, Any]:
    """The record on the line starting at byte `offset` of a split `read_split` has already checked."""
    with Path(path).open("rb") as handle:
        handle.seek(offset)
        # utf-8-sig: the first line may carry the byte-order mark io.numbered_lines drops.
        return json.loads(handle.readline().decode("utf-8-sig"))


def _checked_record(path: Path, line_no: int, record: dict[str, Any],
                    label2id: Mapping[str, int]) -> dict[str, Any]:
    where = f"{path}:{line_no}"
    tokens, tags = record.get("tokens"), record.get("ner_tags")
    for key, value in (("tokens", tokens), ("ner_tags", tags)):
        if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
            raise InputError(f"{where}: '{key}' must be a non-empty list of strings")
    if len(tokens) != len(tags):
        raise InputError(f"{where}: {len(tokens)} tokens but {len(tags)} ner_tags; they must pair up one to one")
    unknown = sorted(set(tags) - set(label2id))
    if unknown:
        raise InputError(f"{where}: tags {unknown} are not in label2id {sorted(label2id)}; "
                         "re-run annotate or fix the label map")
    if not is_valid_iob2(tags):
        raise InputError(f"{where}: ner_tags are not valid IOB2 (an I-X must follow B-X or I-X): {tags}")
    return record
