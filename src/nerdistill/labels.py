"""Label maps: the student's IOB2 label set, IOB2 transition rules, the teacher/student shared space.

Label sets are always read from a model's `id2label` or from `label2id.json`, never hard-coded.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from nerdistill.text import drop_types as drop_entity_types
from nerdistill.text import iob1_to_iob2, parse_tag

log = logging.getLogger(__name__)

# Score of an IOB2 move that cannot happen (O -> I-X, B-X -> I-Y, start -> I-X): low enough that
# exp() makes it negligible, finite so that the CRF loss and its gradients stay finite.
IMPOSSIBLE = -10.0


def entity_types(labels: Iterable[str]) -> list[str]:
    """Sorted entity types of a label set in any supported scheme: `[O, I-PER, B-LOC]` -> `[LOC, PER]`."""
    return sorted({entity_type for _, entity_type in map(parse_tag, labels) if entity_type is not None})


def ordered_labels(id2label: Mapping[int, str] | Mapping[str, str]) -> list[str]:
    """Labels by id; keys may be ints or strings (JSON configs keep them as strings)."""
    ids = sorted(int(key) for key in id2label)
    if ids != list(range(len(ids))):
        raise ValueError(f"id2label ids must be 0..{len(ids) - 1} without gaps, got {ids}")
    by_id = {int(key): label for key, label in id2label.items()}
    return [by_id[i] for i in ids]


def check_prior_labels(prior: Mapping[str, Any], id2label: Mapping[int, str] | Mapping[str, str]) -> list[str]:
    """The student's labels in id order, once transitions.json is known to score the same ones."""
    names = ordered_labels(id2label)
    if list(prior.get("labels", [])) != names:
        raise ValueError(f"transitions.json labels {prior.get('labels')} differ from the student's labels {names}; "
                         "re-run annotate so both come from the same label set")
    return names


def student_labels(teacher_id2label: Mapping[int, str], drop_types: Iterable[str]) -> list[str]:
    """The student's IOB2 labels: `O`, then `B-X, I-X` for each kept type, types sorted.

    The teacher may use IO (`I-PER`), IOB2 (`B-PER, I-PER`) or plain types (`PER`); any other
    scheme raises with the offending label. Dropped types the teacher does not have are ignored
    with a warning (the default `[MISC]` on a teacher without MISC is harmless).
    """
    teacher = ordered_labels(teacher_id2label)
    if "O" not in teacher:
        raise ValueError(f"teacher labels {teacher} have no 'O' label; a token-classification NER "
                         "model must have one")
    types = entity_types(teacher)
    dropped = set(drop_types)
    unknown = sorted(dropped - set(types))
    if unknown:
        log.warning("annotate.drop_types names %s, which the teacher (types %s) does not have", unknown, types)
    kept = [entity_type for entity_type in types if entity_type not in dropped]
    if not kept:
        raise ValueError(f"annotate.drop_types {sorted(dropped)} removes every teacher type {types}; "
                         "keep at least one")
    return ["O", *(f"{prefix}-{entity_type}" for entity_type in kept for prefix in ("B", "I"))]


def allowed_start(label: str) -> bool:
    """IOB2: a sequence may not start inside an entity."""
    return parse_tag(label)[0] != "I"


def allowed_transition(previous: str, following: str) -> bool:
    """IOB2: `I-X` may only follow `B-X` or `I-X`; every other move is allowed."""
    prefix, entity_type = parse_tag(following)
    return prefix != "I" or parse_tag(previous)[1] == entity_type


def shared_space(teacher_id2label: Mapping[int, str], student_id2label: Mapping[int, str],
                 dropped_types: Iterable[str] | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """0/1 matrices folding teacher and student label distributions into one space.

    The teacher (e.g. IO: `O, I-LOC, I-PER, I-MISC, I-ORG`) and the student (IOB2, MISC dropped:
    `O, B-LOC, I-LOC, ...`) cannot be compared label by label. Both are mapped onto
    `names = ["O", *student types]`: the student's `B-X` and `I-X` both go to `X`; a teacher label
    of a kept type `X` (any prefix) goes to `X`; a teacher label of a dropped type goes to `O`,
    exactly as annotate relabelled it.

    Returns `(teacher_to_shared (Lt, S), student_to_shared (Ls, S), names)`. Every row holds
    exactly one 1, so `probs @ matrix` turns a distribution over labels into a distribution over
    the shared space (it sums to 1 again); the KD loss relies on this.

    `dropped_types=None` folds every teacher type the student lacks into O; when given, a teacher
    type that is neither a student type nor dropped raises, as does a student type the teacher
    does not have.
    """
    teacher = ordered_labels(teacher_id2label)
    student = ordered_labels(student_id2label)
    types = entity_types(student)
    teacher_types = set(entity_types(teacher))
    missing = sorted(set(types) - teacher_types)
    if missing:
        raise ValueError(f"student types {missing} are not teacher types {sorted(teacher_types)}; "
                         "the student was labelled by another teacher")
    dropped = teacher_types - set(types) if dropped_types is None else set(dropped_types)
    unmapped = sorted(teacher_types - set(types) - dropped)
    if unmapped:
        raise ValueError(f"teacher types {unmapped} are neither student types {types} nor dropped "
                         f"types {sorted(dropped)}")
    names = ["O", *types]
    column = {name: i for i, name in enumerate(names)}
    return _fold(teacher, column, dropped), _fold(student, column, set()), names


def _fold(labels: Sequence[str], column: Mapping[str, int], dropped: set[str]) -> torch.Tensor:
    matrix = torch.zeros(len(labels), len(column))  # (L, S)
    for row, label in enumerate(labels):
        entity_type = parse_tag(label)[1]
        matrix[row, column["O" if entity_type is None or entity_type in dropped else entity_type]] = 1.0
    return matrix


def expected_transition_counts(distributions: Iterable[torch.Tensor], teacher_labels: Sequence[str],
                               labels: Sequence[str], dropped_types: Iterable[str]
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Expected counts of the student's IOB2 moves when each line's words carry the teacher's
    distributions, words drawn independently: (start (Ls,), end (Ls,), moves (Ls, Ls)), moves[i, j]
    counting label i followed by label j.

    `distributions` holds one (n, Lt) tensor per line over `teacher_labels` (IO, IOB1 or IOB2),
    as `NerTagger.tag_words_with_probs` stitches them. A word's student label depends on its own
    teacher label and the previous word's (IO/IOB1 -> IOB2, then `dropped_types` -> O, as the tagger
    turns its argmax into tags), so a move t -> t+1 sums over the teacher labels of t-1, t and t+1.
    One-hot distributions give the plain counts of the tags annotate writes.
    """
    first, after = _student_label_of(teacher_labels, labels, tuple(dropped_types))
    size = len(labels)
    start, end = torch.zeros(size, dtype=torch.float64), torch.zeros(size, dtype=torch.float64)
    moves = torch.zeros(size, size, dtype=torch.float64)
    for probs in distributions:
        if len(probs) == 0:
            continue
        p = probs.to(torch.float64)  # (n, Lt)
        # given[t, b, i]: P(student label i at t | teacher label b at t), the label at t-1 summed out.
        given = torch.cat([first.unsqueeze(0), torch.einsum("ta,abi->tbi", p[:-1], after)])  # (n, Lt, Ls)
        marginal = torch.einsum("tb,tbi->ti", p, given)  # (n, Ls)
        start += marginal[0]
        end += marginal[-1]
        # following[t, b, j]: P(student label j at t+1 | teacher label b at t), the label at t+1 summed out.
        following = torch.einsum("tc,bcj->tbj", p[1:], after)  # (n-1, Lt, Ls)
        moves += torch.einsum("tb,tbi,tbj->ij", p[:-1], given[:-1], following)
    return start, end, moves


def _student_label_of(teacher_labels: Sequence[str], labels: Sequence[str], dropped: tuple[str, ...]
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """0/1 (first (Lt, Ls), after (Lt, Lt, Ls)): the student label of a word the teacher labels b,
    first[b] at a line's start, after[a, b] after a word it labels a."""
    index = {label: i for i, label in enumerate(labels)}

    def student(tags: list[str]) -> int:
        return index[drop_entity_types(iob1_to_iob2(tags), dropped)[-1]]

    size = len(teacher_labels)
    first = torch.zeros(size, len(labels), dtype=torch.float64)
    after = torch.zeros(size, size, len(labels), dtype=torch.float64)
    for b, tag in enumerate(teacher_labels):
        first[b, student([tag])] = 1.0
        for a, previous in enumerate(teacher_labels):
            after[a, b, student([previous, tag])] = 1.0
    return first, after


def transition_prior(start: torch.Tensor, end: torch.Tensor, moves: torch.Tensor, labels: Sequence[str]) -> dict:
    """Log frequencies of IOB2 moves from (expected) counts, the transitions.json format.

    `start[j] = log P(first = j)`; from label i a line either moves on or ends, so
    `transitions[i][j] = log P(next = j | i)` and `end[i] = log P(end | i)` share one denominator,
    the occurrences of i: `exp(transitions[i]) + exp(end[i])` sums to 1 (a Markov chain with a stop
    state, whose path log-probability is exactly the CRF's start + transitions + end score). Each
    is add-one smoothed over the allowed outcomes only; impossible IOB2 moves get `IMPOSSIBLE`.
    The teacher has no CRF: this prior stands in for its transition matrix.
    """
    size = len(labels)
    start_allowed = [allowed_start(label) for label in labels]
    # Row i over [next label j..., end]: ending is always allowed.
    rows = [_log_smoothed([*moves[i].tolist(), float(end[i])],
                          [*(allowed_transition(labels[i], label) for label in labels), True]) for i in range(size)]
    return {
        "labels": list(labels),
        "start": _log_smoothed(start.tolist(), start_allowed),
        "end": [row[-1] for row in rows],
        "transitions": [row[:-1] for row in rows],
    }


def _log_smoothed(counts: Sequence[float], allowed: Sequence[bool]) -> list[float]:
    total = sum(count + 1 for count, ok in zip(counts, allowed) if ok)
    return [math.log((count + 1) / total) if ok else IMPOSSIBLE for count, ok in zip(counts, allowed)]
