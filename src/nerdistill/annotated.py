"""The contract between annotate and every later stage: what `data/annotated` holds.

One folder: `{train,val,test}.jsonl` (one record a line: `id`, `text`, `tokens`, `offsets`,
`ner_tags` in IOB2), `label2id.json` (the student's labels) and `transitions.json` (the teacher's
transition prior). Only this module spells those file names; readers check every record.

`transitions.json`: `labels` (the student's, in label2id order), `start` (L), `end` (L) and
`transitions` (L x L, [previous][next]): add-one smoothed log-probabilities of the IOB2 moves the
teacher's per-word label distributions expect on the train split (`labels.expected_transition_counts`,
`labels.transition_prior`), `labels.IMPOSSIBLE` where IOB2 forbids the move. It is the CRF's
starting point (`distill.crf_init: prior`) and the target of the CRF loss.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

    def write(self, splits: Mapping[str, Iterable[dict[str, Any]]], label2id: dict[str, int],
              transitions: dict[str, Any]) -> None:
        """Write every file into this folder (annotate passes its staging folder)."""
        for name in SPLITS:
            write_jsonl(self.split_path(name), splits[name])
        write_json(self.label2id_path, label2id)
        write_json(self.transitions_path, transitions)


def load_split(path: str | Path, label2id: Mapping[str, int] | None = None) -> list[dict[str, Any]]:
    """Read an annotated split, checking every record; errors name file:line and the fix.

    Each record needs `tokens` and `ner_tags`, non-empty lists of strings of equal length, with
    IOB2 tags from `label2id` (by default the `label2id.json` written beside the split).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: split not found; run `nerdistill annotate` first")
    if label2id is None:
        label2id = read_json(path.parent / LABEL2ID)
    records = [_checked_record(path, line_no, record, label2id) for line_no, record in read_jsonl(path)]
    if not records:
        raise InputError(f"{path}: no records; annotate a larger corpus")
    return records


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
