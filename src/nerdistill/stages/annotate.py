"""annotate: the teacher labels the raw corpus; the result is split into train/val/test.

Each phrase is split into words (text.split_words), the teacher reads it in windows of
`teacher.max_length` sub-tokens (long lines are never truncated), each word takes the label of
its first sub-token, IO becomes IOB2 and `annotate.drop_types` become O. Exact repeats of an
earlier line are dropped before the seeded split, so no phrase sits in two splits. The transition
prior (transitions.json) is what the teacher's per-word distributions on the train split expect,
not a count of its argmax tags: the student's CRF is pulled towards the teacher's uncertainty too.

Memory does not grow with the corpus: a first pass picks the phrases and their splits (corpus.py),
then the teacher tags them a chunk at a time and each record is written as it comes; only counts
are kept. Under torchrun each process tags every world-th chunk and the main process writes them
in corpus order, the same files one process writes.
"""
from __future__ import annotations

import argparse
import collections
import itertools
import logging
import math
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from nerdistill.annotated import SPLITS, AnnotatedDir
from nerdistill.corpus import Corpus, Phrase, scan_corpus
from nerdistill.distributed import Ranks, gathered_in_order, process_group
from nerdistill.io import InputError, atomic_dir
from nerdistill.labels import expected_transition_counts, transition_prior
from nerdistill.params import Params, SplitRatios
from nerdistill.tagger.core import NerTagger
from nerdistill.tagger.teacher import teacher_tagger
from nerdistill.text import Word, entity_spans, is_valid_iob2, split_words
from nerdistill.tracking import tracked_stage

log = logging.getLogger(__name__)

# Lines tagged together, in teacher batches: enough for windows of similar length to share batches.
# It does not depend on the number of processes, so neither do the batches nor the figures.
BATCHES_PER_CHUNK = 32


@dataclass
class Tally:
    """What the metrics and the transition prior need of the records, summed chunk by chunk:
    phrases per split, words, entities per type, lines in several windows, words cut to a window,
    and the expected IOB2 moves (start, end, moves) on the train split."""
    phrases: Counter[str]
    tokens: int
    entities: Counter[str]
    windowed_lines: int
    long_words_cut: int
    moves: tuple[torch.Tensor, torch.Tensor, torch.Tensor]

    def add(self, other: Tally) -> None:
        self.phrases += other.phrases
        self.tokens += other.tokens
        self.entities += other.entities
        self.windowed_lines += other.windowed_lines
        self.long_words_cut += other.long_words_cut
        self.moves = tuple(mine + theirs for mine, theirs in zip(self.moves, other.moves))


def run(params: Params, corpus: Path, out_dir: Path) -> dict[str, Any]:
    settings = params.annotate
    raw = scan_corpus(corpus, settings.max_line_chars)
    raw.check_skipped(settings.max_skipped_fraction)
    split_of = split_indices(len(raw.kept), settings.split, params.base.seed, corpus)
    ranks = Ranks.from_env()
    tagger = teacher_tagger(params.teacher, ranks.device(), drop_types=settings.drop_types)
    log.info("teacher %s: labels %s -> student labels %s", params.teacher.model_name, tagger.backend.labels,
             tagger.labels)
    chunk_lines = BATCHES_PER_CHUNK * params.teacher.batch_size
    chunks = _chunks(raw.phrases(), split_of, chunk_lines)
    own = (_tag_chunk(tagger, chunk) for chunk in ranks.share(chunks))
    with process_group(ranks):
        tagged = gathered_in_order(own, math.ceil(len(raw.kept) / chunk_lines), ranks)
        if not ranks.is_main:
            collections.deque(tagged, maxlen=0)  # tag this process's share; the main process writes
            return {}
        # The folder is swapped in whole: a kill mid-write leaves the previous one as it was, never new
        # splits beside old ones (which DVC would then cache as one output).
        with atomic_dir(out_dir) as staging:
            tally = _write(AnnotatedDir(staging), tagged, tagger, len(raw.kept))
    return _metrics(tally, raw)


def _chunks(phrases: Iterable[Phrase], split_of: np.ndarray, size: int) -> Iterator[list[tuple[Phrase, str]]]:
    pairs = zip(phrases, (SPLITS[i] for i in split_of))
    while chunk := list(itertools.islice(pairs, size)):
        yield chunk


def _tag_chunk(tagger: NerTagger, chunk: list[tuple[Phrase, str]]) -> tuple[list[tuple[str, dict]], Tally]:
    """The records of a chunk of phrases, each with its split, and their tally."""
    labels = tagger.labels
    words = [split_words(phrase.text) for phrase, _ in chunk]
    texts = [[word.text for word in line] for line in words]
    cut_before = tagger.words.words_cut
    tags, probs = tagger.tag_words_with_probs(texts)
    cut = tagger.words.words_cut - cut_before  # read before windowing the lines again below
    records = [(split, _record(phrase, line, line_tags, labels))
               for (phrase, split), line, line_tags in zip(chunk, words, tags)]
    train_probs = (line_probs for (_, split), line_probs in zip(chunk, probs) if split == "train")
    tally = Tally(phrases=Counter(split for _, split in chunk), tokens=sum(map(len, texts)),
                  entities=Counter(kind for line_tags in tags for kind, _, _ in entity_spans(line_tags)),
                  windowed_lines=sum(len(tagger.words.windows(line)) > 1 for line in texts), long_words_cut=cut,
                  moves=expected_transition_counts(train_probs, tagger.backend.labels, labels, tagger.drop_types))
    return records, tally


def _write(folder: AnnotatedDir, tagged: Iterable[tuple[list[tuple[str, dict]], Tally]], tagger: NerTagger,
           phrases: int) -> Tally:
    """Each chunk's records appended to their split, in corpus order; the label map and the
    transition prior last. Returns the whole corpus's tally."""
    labels = tagger.labels
    size = len(labels)
    tally = Tally(Counter(), 0, Counter(), 0, 0, (torch.zeros(size, dtype=torch.float64),
                                                  torch.zeros(size, dtype=torch.float64),
                                                  torch.zeros(size, size, dtype=torch.float64)))
    with folder.appender() as append, tqdm(total=phrases, desc="annotate", unit="phrase") as progress:
        for records, chunk_tally in tagged:
            for split, record in records:
                append(split, record)
            tally.add(chunk_tally)
            progress.update(len(records))
    folder.write_labels({label: i for i, label in enumerate(labels)}, transition_prior(*tally.moves, labels))
    return tally


def _record(phrase: Phrase, words: list[Word], tags: list[str], labels: list[str]) -> dict[str, Any]:
    if not is_valid_iob2(tags) or not set(tags) <= set(labels):
        raise ValueError(f"phrase {phrase.id} (line {phrase.line_no}): tags {tags} are not valid IOB2 over {labels}")
    return {"id": phrase.id, "text": phrase.text, "tokens": [w.text for w in words],
            "offsets": [[w.start, w.end] for w in words], "ner_tags": tags}


def split_indices(count: int, ratios: SplitRatios, seed: int, corpus: Path) -> np.ndarray:
    """(count,) each phrase's split, an index into SPLITS: a seeded shuffle cut by `ratios`, each
    split holding >= 1 phrase."""
    if count < len(SPLITS):
        raise InputError(f"{corpus}: {count} phrase(s) to annotate; train, val and test need at least one each")
    val = max(1, round(count * ratios.val))
    test = max(1, round(count * ratios.test))
    train = count - val - test
    if train < 1:
        raise InputError(f"{corpus}: {count} phrases leave none for train with annotate.split={ratios}")
    order = np.arange(count, dtype=np.int64)
    # random's shuffle on the array draws the same permutation as on a list of indices, 8 bytes a phrase.
    random.Random(seed).shuffle(order)
    split_of = np.empty(count, dtype=np.uint8)
    for index, (begin, end) in enumerate(((0, train), (train, train + val), (train + val, count))):
        split_of[order[begin:end]] = index
    return split_of


def _metrics(tally: Tally, raw: Corpus) -> dict[str, Any]:
    return {
        "phrases": {"total": sum(tally.phrases.values()), **{name: tally.phrases[name] for name in SPLITS}},
        "tokens": tally.tokens,
        "entities": {"total": sum(tally.entities.values()), **dict(sorted(tally.entities.items()))},
        "skipped": {"blank_lines": raw.blank_lines, "duplicates": raw.duplicates, "no_words": raw.no_words,
                    "too_long": raw.too_long, "too_long_fraction": raw.skipped_fraction},
        "windowed_lines": tally.windowed_lines,
        "long_words_cut": tally.long_words_cut,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("Bad input (a byte that is not UTF-8, malformed JSONL, a repeated id) stops with FILE:LINE and "
                     "exit status 2; blank, repeated and over-long lines are skipped and counted in the metrics. The "
                     "output folder is replaced whole at the end: on Ctrl-C or SIGTERM the previous one stays as it "
                     "was (exit status 130 or 143). Under `torchrun --nproc_per_node=N` each process tags its share "
                     "of the lines (on its own GPU when there are GPUs) and the main process writes the same files.")
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
