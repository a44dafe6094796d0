"""annotate: the teacher labels the raw corpus; the result is split into train/val/test.

Each phrase is split into words (text.split_words), the teacher reads it in windows of
`teacher.max_length` sub-tokens (long lines are never truncated), each word takes the label of
its first sub-token, IO becomes IOB2 and `annotate.drop_types` become O. Exact repeats of an
earlier line are dropped before the seeded split, so no phrase sits in two splits. The transition
prior (transitions.json) is what the teacher's per-word distributions on the train split expect,
not a count of its argmax tags: the student's CRF is pulled towards the teacher's uncertainty too.
"""
from __future__ import annotations

import argparse
import logging
import random
from collections import Counter
from pathlib import Path
from typing import Any

from nerdistill.corpus import Phrase, read_corpus
from nerdistill.annotated import SPLITS, AnnotatedDir
from nerdistill.io import InputError, atomic_dir
from nerdistill.labels import expected_transition_counts, transition_prior
from nerdistill.params import Params, SplitRatios
from nerdistill.tagger.teacher import teacher_tagger
from nerdistill.text import Word, entity_spans, is_valid_iob2, split_words
from nerdistill.tracking import tracked_stage

log = logging.getLogger(__name__)


def run(params: Params, corpus: Path, out_dir: Path) -> dict[str, Any]:
    settings = params.annotate
    raw = read_corpus(corpus, settings.max_line_chars)
    _check_skipped(corpus, raw.too_long, raw.skipped_fraction, settings.max_line_chars, settings.max_skipped_fraction)
    tagger = teacher_tagger(params.teacher, drop_types=settings.drop_types)
    labels = tagger.labels
    log.info("teacher %s: labels %s -> student labels %s", params.teacher.model_name, tagger.backend.labels, labels)

    unique, duplicates = drop_duplicates(raw.phrases)
    phrases, words, no_words = _split_phrases(unique)
    word_texts = [[w.text for w in phrase_words] for phrase_words in words]
    teacher_tags, teacher_probs = tagger.tag_words_with_probs(word_texts, progress="annotate")
    records = [_record(phrase, phrase_words, tags, labels)
               for phrase, phrase_words, tags in zip(phrases, words, teacher_tags)]

    splits = split_indices(len(records), settings.split, params.base.seed, corpus)
    expected = expected_transition_counts((teacher_probs[i] for i in splits["train"]), tagger.backend.labels,
                                          labels, tagger.drop_types)
    # The folder is swapped in whole: a kill mid-write leaves the previous one as it was, never new
    # splits beside old ones (which DVC would then cache as one output).
    with atomic_dir(out_dir) as staging:
        AnnotatedDir(staging).write({name: (records[i] for i in indices) for name, indices in splits.items()},
                                    label2id={label: i for i, label in enumerate(labels)},
                                    transitions=transition_prior(*expected, labels))
    skipped = {"blank_lines": raw.blank_lines, "duplicates": duplicates, "no_words": no_words, "too_long": len(raw.too_long),
               "too_long_fraction": raw.skipped_fraction}
    windowed = sum(len(tagger.words.windows(line)) > 1 for line in word_texts)
    return _metrics(records, splits, skipped, windowed)


def drop_duplicates(phrases: list[Phrase]) -> tuple[list[Phrase], int]:
    """The first of each text, in corpus order, and how many repeats were dropped. A repeated line
    (boilerplate, a header) split at random would sit in train and test at once and inflate
    every test score, agreement included."""
    first_line: dict[str, int] = {}
    kept = []
    for phrase in phrases:
        if phrase.text in first_line:
            log.debug("line %d repeats line %d, dropped", phrase.line_no, first_line[phrase.text])
        else:
            first_line[phrase.text] = phrase.line_no
            kept.append(phrase)
    if len(kept) < len(phrases):
        log.info("dropped %d repeated lines (exact duplicates of an earlier line)", len(phrases) - len(kept))
    return kept, len(phrases) - len(kept)


def _split_phrases(phrases: list[Phrase]) -> tuple[list[Phrase], list[list[Word]], int]:
    """Words of each phrase; phrases of invisible characters only (no word) are left out and counted."""
    kept, words = [], []
    for phrase in phrases:
        phrase_words = split_words(phrase.text)
        if phrase_words:
            kept.append(phrase)
            words.append(phrase_words)
        else:
            log.warning("line %d: no word in %r, skipped", phrase.line_no, phrase.text)
    return kept, words, len(phrases) - len(kept)


def _check_skipped(corpus: Path, too_long: list[int], fraction: float, max_chars: int, max_fraction: float) -> None:
    if not too_long:
        return
    shown = ", ".join(map(str, too_long[:10])) + (" ..." if len(too_long) > 10 else "")
    log.warning("%s: skipped %d lines over annotate.max_line_chars=%d (lines %s)",
                corpus, len(too_long), max_chars, shown)
    if fraction > max_fraction:
        raise InputError(f"{corpus}: {len(too_long)} lines ({fraction:.1%}) are over annotate.max_line_chars="
                         f"{max_chars} (lines {shown}), more than annotate.max_skipped_fraction={max_fraction}; "
                         "split those documents into phrases or raise annotate.max_line_chars")


def _record(phrase: Phrase, words: list[Word], tags: list[str], labels: list[str]) -> dict[str, Any]:
    if not is_valid_iob2(tags) or not set(tags) <= set(labels):
        raise ValueError(f"phrase {phrase.id} (line {phrase.line_no}): tags {tags} are not valid IOB2 over {labels}")
    return {"id": phrase.id, "text": phrase.text, "tokens": [w.text for w in words],
            "offsets": [[w.start, w.end] for w in words], "ner_tags": tags}


def split_indices(count: int, ratios: SplitRatios, seed: int, corpus: Path) -> dict[str, list[int]]:
    """Seeded shuffle, then cut by `ratios`; each split keeps corpus order and holds >= 1 phrase."""
    if count < len(SPLITS):
        raise InputError(f"{corpus}: {count} phrase(s) to annotate; train, val and test need at least one each")
    order = list(range(count))
    random.Random(seed).shuffle(order)
    val = max(1, round(count * ratios.val))
    test = max(1, round(count * ratios.test))
    train = count - val - test
    if train < 1:
        raise InputError(f"{corpus}: {count} phrases leave none for train with annotate.split={ratios}")
    cuts = {"train": order[:train], "val": order[train:train + val], "test": order[train + val:]}
    return {name: sorted(indices) for name, indices in cuts.items()}


def _metrics(records: list[dict[str, Any]], splits: dict[str, list[int]], skipped: dict[str, float],
             windowed_lines: int) -> dict[str, Any]:
    entities = Counter(kind for record in records for kind, _, _ in entity_spans(record["ner_tags"]))
    return {
        "phrases": {"total": len(records), **{name: len(indices) for name, indices in splits.items()}},
        "tokens": sum(len(record["tokens"]) for record in records),
        "entities": {"total": sum(entities.values()), **dict(sorted(entities.items()))},
        "skipped": skipped,
        "windowed_lines": windowed_lines,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("Bad input (a byte that is not UTF-8, malformed JSONL, a repeated id) stops with FILE:LINE and "
                     "exit status 2; blank, repeated and over-long lines are skipped and counted in the metrics. The "
                     "output folder is replaced whole at the end: on Ctrl-C or SIGTERM the previous one stays as it "
                     "was (exit status 130 or 143).")
    parser.add_argument("--corpus", type=Path, required=True,
                        help=".txt (one phrase a line) or .jsonl with a text field")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for {train,val,test}.jsonl, label2id.json, transitions.json")
    parser.add_argument("--metrics", type=Path, required=True)


def main(args: argparse.Namespace, params: Params) -> int:
    annotated = AnnotatedDir(args.out)
    tracked_stage("annotate", params, args.params, args.metrics, lambda: run(params, args.corpus, args.out),
                  artifacts=(annotated.label2id_path, annotated.transitions_path))
    return 0
