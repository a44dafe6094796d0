"""Entity-level NER scores (seqeval, strict IOB2), a CoNLL gold reader and a type confusion matrix.

Scores are strict: an entity counts only when its type, start and end all match, and a
sequence that breaks IOB2 (an `I-X` after `O`) yields no entity there, exactly as
`seqeval.metrics.classification_report(mode="strict", scheme=IOB2)` counts them.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

from seqeval.scheme import IOB2, Entities

from nerdistill.io import InputError, utf8_lines
from nerdistill.text import drop_types, iob1_to_iob2, is_valid_iob2

log = logging.getLogger(__name__)

OUTSIDE = "O"
_TAG = re.compile(r"^(O|[BI]-\S+)$")

Sentence = tuple[list[str], list[str]]


def entity_scores(gold: list[list[str]], pred: list[list[str]]) -> dict:
    """Micro and per-type precision/recall/F1 of `pred` against `gold` (IOB2 tags per word).

    Returns `{"precision", "recall", "f1", "support" (gold entities), "predicted",
    "sentences", "per_type": {type: {"precision", "recall", "f1", "support"}}}`.
    A ratio with a zero denominator is 0.0, as in seqeval with `zero_division=0`.
    """
    check_aligned(gold, pred)
    gold_entities = Entities(gold, IOB2)
    pred_entities = Entities(pred, IOB2)
    per_type = {}
    totals = Counter()
    for entity_type in sorted(gold_entities.unique_tags | pred_entities.unique_tags):
        gold_set = gold_entities.filter(entity_type)
        pred_set = pred_entities.filter(entity_type)
        counts = Counter(correct=len(gold_set & pred_set), predicted=len(pred_set), support=len(gold_set))
        per_type[entity_type] = {**_prf(counts), "support": counts["support"]}
        totals.update(counts)
    return {**_prf(totals), "support": totals["support"], "predicted": totals["predicted"],
            "sentences": len(gold), "per_type": per_type}


def check_aligned(gold: list[list[str]], pred: list[list[str]]) -> None:
    """Raise ValueError unless both taggings have the same sentences and words."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} reference sentences but {len(pred)} predicted ones; "
                         "tag the very same sentences")
    for index, (gold_tags, pred_tags) in enumerate(zip(gold, pred)):
        if len(gold_tags) != len(pred_tags):
            raise ValueError(f"sentence {index}: {len(gold_tags)} reference tags but {len(pred_tags)} "
                             "predicted ones; both must tag the same words")


def _prf(counts: Counter) -> dict[str, float]:
    correct, predicted, support = counts["correct"], counts["predicted"], counts["support"]
    precision = correct / predicted if predicted else 0.0
    recall = correct / support if support else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def restrict_types(tags: list[str], kept_types: set[str]) -> list[str]:
    """Map entities of types outside `kept_types` to O (a teacher's MISC, a gold set's extra types),
    so that every model and reference is compared on the student's label set."""
    extra = {tag[2:] for tag in tags if tag != OUTSIDE} - kept_types
    return drop_types(tags, extra) if extra else tags


def type_confusion(gold: list[list[str]], pred: list[list[str]]) -> tuple[list[str], list[list[int]]]:
    """Token-level confusion over entity types plus "O": `matrix[i][j]` counts words whose
    reference type is `types[i]` and predicted type is `types[j]`.

    Token level because entity-level confusion needs an alignment rule for partial overlaps,
    and every choice of rule hides some errors; per word, each error is counted exactly once.
    The B-/I- prefix is ignored here (boundary errors show in the strict F1 instead).
    """
    check_aligned(gold, pred)
    pairs = Counter((_type(g), _type(p)) for gold_tags, pred_tags in zip(gold, pred)
                    for g, p in zip(gold_tags, pred_tags))
    entity_types = sorted({t for pair in pairs for t in pair} - {OUTSIDE})
    types = entity_types + [OUTSIDE]
    matrix = [[pairs[(row, col)] for col in types] for row in types]
    return types, matrix


def _type(tag: str) -> str:
    return OUTSIDE if tag == OUTSIDE else tag[2:]


def read_conll(path: str | Path) -> list[Sentence]:
    """Read a CoNLL gold file into (words, IOB2 tags) sentences.

    One word a line, sentences separated by blank lines, `-DOCSTART-` lines skipped. Columns
    are tab-separated when the line has a tab, else whitespace-separated; the tag is the last
    column and the word the first, or the second when every line of the file starts with an
    integer index and has at least three columns (WikiNEuRal's `index<TAB>word<TAB>tag`).
    Tags may be IOB1 or IOB2: IOB1-to-IOB2 conversion is the identity on valid IOB2, so
    the file is converted whenever any sentence is not valid IOB2. Lines are read by
    `io.utf8_lines`: a leading byte-order mark and CRLF line ends are fine, bad bytes raise.
    """
    path = Path(path)
    rows = _read_rows(path)
    word_column = 1 if _has_index_column(rows) else 0
    sentences = [([cols[word_column] for _, cols in block], [cols[-1] for _, cols in block])
                 for block in _blocks(rows)]
    if not sentences:
        raise InputError(f"{path}: no sentences found; expected one `word tag` line per word, "
                         "sentences separated by blank lines")
    if all(is_valid_iob2(tags) for _, tags in sentences):
        log.info("%s: %d sentences, IOB2 tags", path, len(sentences))
        return sentences
    log.info("%s: %d sentences, IOB1 tags converted to IOB2", path, len(sentences))
    return [(words, iob1_to_iob2(tags)) for words, tags in sentences]


def _read_rows(path: Path) -> list[tuple[int, list[str] | None]]:
    """(line number, columns) per line; None marks a sentence break."""
    if not path.is_file():
        raise InputError(f"{path}: gold file not found; set evaluate.gold_path to an existing CoNLL file")
    rows: list[tuple[int, list[str] | None]] = []
    width = None
    for line_no, line in utf8_lines(path):
        if not line.strip():
            rows.append((line_no, None))
            continue
        cols = [col.strip() for col in line.split("\t")] if "\t" in line else line.split()
        if cols[0] == "-DOCSTART-" or (len(cols) > 1 and cols[1] == "-DOCSTART-"):
            rows.append((line_no, None))
            continue
        width = width or len(cols)
        _check_row(path, line_no, cols, width)
        rows.append((line_no, cols))
    return rows


def _check_row(path: Path, line_no: int, cols: list[str], width: int) -> None:
    if len(cols) < 2:
        raise InputError(f"{path}:{line_no}: expected at least two columns (word and tag), got {cols!r}")
    if len(cols) != width:
        raise InputError(f"{path}:{line_no}: {len(cols)} columns where earlier lines have {width}; "
                         "every word line needs the same columns")
    if not _TAG.match(cols[-1]):
        raise InputError(f"{path}:{line_no}: last column {cols[-1]!r} is not a tag; "
                         "expected O, B-TYPE or I-TYPE (IOB1 or IOB2)")
    if any(not col.strip() for col in cols):
        raise InputError(f"{path}:{line_no}: empty column in {cols!r}")


def _has_index_column(rows: list[tuple[int, list[str] | None]]) -> bool:
    word_rows = [cols for _, cols in rows if cols is not None]
    return bool(word_rows) and len(word_rows[0]) >= 3 and all(cols[0].isdigit() for cols in word_rows)


def _blocks(rows: list[tuple[int, list[str] | None]]) -> list[list[tuple[int, list[str]]]]:
    blocks: list[list[tuple[int, list[str]]]] = [[]]
    for line_no, cols in rows:
        if cols is None:
            if blocks[-1]:
                blocks.append([])
        else:
            blocks[-1].append((line_no, cols))
    return [block for block in blocks if block]
