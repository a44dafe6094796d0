"""Annotated records -> word-level features, sliding windows for long lines, the batch collator
(and reading a batch at each word's first sub-token), and the training data of a stage.

Everything downstream works in word space: a model's sub-token outputs are read at each word's
first sub-token (`word_index`). Lines longer than the model's `max_length` are never truncated:
they are cut into overlapping windows, and each word is *owned* by exactly one window (the one
whose centre it is nearest), so stitched predictions and training labels count every word once.
Each window says whether it starts and ends its line: the CRF's start and end scores belong to a
line's edges, not to a cut in the middle of it (`modeling.CrfStudent` drops them elsewhere).
"""
from __future__ import annotations

import logging
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nerdistill.annotated import AnnotatedDir, line_starts, record_at

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label of padding, skipped by every loss


@dataclass(frozen=True)
class Window:
    """One model input covering a run of consecutive words of a line.

    `input_ids` include the special tokens; `word_index[k]` is the position in `input_ids` of the
    first sub-token of word `word_ids[k]` (its index in the whole line); `owned[k]` says whether
    this window is the one responsible for that word when overlapping windows are stitched.
    `starts_line` / `ends_line`: its first / last word is the line's (a line in one window has both).
    """
    input_ids: list[int]
    word_index: list[int]
    word_ids: list[int]
    owned: list[bool]
    starts_line: bool
    ends_line: bool

    def model_input(self) -> dict[str, Any]:
        """The unlabelled feature `NerCollator` takes."""
        return {"input_ids": self.input_ids, "word_index": self.word_index,
                "starts_line": self.starts_line, "ends_line": self.ends_line}


class WordTokenizer:
    """Turns a list of words into model windows of at most `max_length` sub-tokens.

    Consecutive windows share about `stride` sub-tokens (whole words) of context. A word the
    tokenizer turns into nothing (zero-width or control characters) is given the unknown token,
    so that no word is ever dropped: words in == words out. A word longer than a window (a URL, a
    base64 blob) is cut to the window; `words_cut` counts such words over every call so far.
    """

    def __init__(self, tokenizer: Any, max_length: int, stride: int) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer; word alignment needs "
                             "word_ids(), which only fast (Rust) tokenizers provide")
        if tokenizer.unk_token_id is None:
            raise ValueError(f"{type(tokenizer).__name__} has no unknown token to stand for empty words")
        self.tokenizer = tokenizer
        self.prefix, self.suffix = _special_tokens(tokenizer)
        self.budget = max_length - len(self.prefix) - len(self.suffix)
        if not 0 <= stride < self.budget:
            raise ValueError(f"max_length={max_length} leaves {self.budget} sub-tokens per window after special "
                             f"tokens; stride={stride} must be in [0, {self.budget})")
        self.stride = stride
        self.words_cut = 0

    def windows(self, words: Sequence[str]) -> list[Window]:
        """Windows covering `words`; every word is owned by exactly one of them, and each owns one or more."""
        if not words:
            return []
        pieces = self._pieces(words)
        spans = _window_spans([len(p) for p in pieces], self.budget, self.stride)
        owners = _owned_ranges(spans, len(words))
        return [self._window(pieces, span, owner) for span, owner in zip(spans, owners)]

    def _pieces(self, words: Sequence[str]) -> list[list[int]]:
        # Only the first sub-token of a word is read; capping lets one absurd "word" (a URL, a
        # base64 blob) still fit in a window. Counted: the pieces cut off are context never seen.
        pieces = word_pieces(self.tokenizer, words)
        self.words_cut += sum(len(p) > self.budget for p in pieces)
        return [p[:self.budget] for p in pieces]

    def _window(self, pieces: list[list[int]], span: tuple[int, int], owner: tuple[int, int]) -> Window:
        input_ids = list(self.prefix)
        word_index = []
        for word in range(*span):
            word_index.append(len(input_ids))
            input_ids.extend(pieces[word])
        input_ids.extend(self.suffix)
        word_ids = list(range(*span))
        return Window(input_ids, word_index, word_ids, [owner[0] <= w < owner[1] for w in word_ids],
                      starts_line=span[0] == 0, ends_line=span[1] == len(pieces))


def word_pieces(tokenizer: Any, words: Sequence[str]) -> list[list[int]]:
    """Sub-token ids of each word of a line, as every model input holds them; a word the tokenizer
    turns into nothing gets the unknown token. Vocabulary trimming reads the same path, so the pieces
    it keeps are the ones the model is fed."""
    encoding = tokenizer(list(words), is_split_into_words=True, add_special_tokens=False)
    pieces: list[list[int]] = [[] for _ in words]
    for token_id, word in zip(encoding["input_ids"], encoding.word_ids()):
        pieces[word].append(token_id)
    return [p or [tokenizer.unk_token_id] for p in pieces]


def _special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single sequence (`<s>` / `</s>`, `[CLS]` / `[SEP]`)."""
    encoding = tokenizer(["a"], is_split_into_words=True, add_special_tokens=True)
    word_ids = encoding.word_ids()
    content = [i for i, word in enumerate(word_ids) if word is not None]
    ids = encoding["input_ids"]
    return ids[:content[0]], ids[content[-1] + 1:]


def _window_spans(lengths: Sequence[int], budget: int, stride: int) -> list[tuple[int, int]]:
    """Word ranges `[start, end)` of at most `budget` sub-tokens (no word is longer), consecutive ones
    sharing up to `stride` sub-tokens of whole words.

    Each window starts after the previous one and reaches past its end, so every window owns a word
    (`_owned_ranges`) and the work is linear: (windows - 1) * (budget - stride) <= 2 * sub-tokens - words.
    """
    spans: list[tuple[int, int]] = []
    start = 0
    while True:
        end, used = start, 0
        while end < len(lengths) and used + lengths[end] <= budget:
            used += lengths[end]
            end += 1
        spans.append((start, end))
        if end == len(lengths):
            return spans
        # Step back over whole words to share context, but never so far that word `end` no longer
        # fits: behind a long word the windows would creep forward a word at a time, owning none.
        room = min(stride, budget - lengths[end])
        next_start, shared = end, 0
        while next_start - 1 > start and shared + lengths[next_start - 1] <= room:
            next_start -= 1
            shared += lengths[next_start]
        start = next_start


def _owned_ranges(spans: list[tuple[int, int]], num_words: int) -> list[tuple[int, int]]:
    """Split each overlap at its middle: a word belongs to the window whose centre is nearer. As
    both ends of `_window_spans`' windows strictly increase, each window owns at least one word."""
    cuts = [0]
    for (_, end), (next_start, _) in zip(spans, spans[1:]):
        cuts.append((next_start + end) // 2)
    cuts.append(num_words)
    return list(zip(cuts, cuts[1:]))


def features(records: Sequence[Mapping[str, Any]], word_tokenizer: WordTokenizer,
             label2id: Mapping[str, int]) -> list[dict[str, list[int]]]:
    """Training features, one per window: `input_ids`, `word_index`, `labels`, `starts_line`, `ends_line`.

    A window keeps only the words it owns in `word_index`/`labels` (the others are context for
    the encoder): each word is trained on exactly once, and the CRF sees a contiguous run of
    labelled words, so no label inside the word mask is ever -100. The owned run starts (ends)
    the line exactly when the window does: the first window owns from word 0, the last to the end.
    """
    out: list[dict[str, list[int]]] = []
    for record in records:
        tags = record["ner_tags"]
        for window in word_tokenizer.windows(record["tokens"]):
            owned = [(index, word) for index, word, mine in zip(window.word_index, window.word_ids, window.owned)
                     if mine]
            out.append({
                "input_ids": window.input_ids,
                "word_index": [index for index, _ in owned],
                "labels": [label2id[tags[word]] for _, word in owned],
                "starts_line": window.starts_line,
                "ends_line": window.ends_line,
            })
    return out


@dataclass(frozen=True)
class NerCollator:
    """Pads features into the batch contract of docs/architecture.md.

    `input_ids`, `attention_mask` (B, T); `word_index` (B, W) with 0 on padding; `word_mask`
    (B, W) bool, left-packed; `starts_line`, `ends_line` (B,) bool (a feature without them is a
    whole line); `labels` (B, W) with -100 on padding, only when every feature has labels.
    """
    pad_token_id: int

    def __call__(self, batch: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        input_ids = [_as_list(feature["input_ids"]) for feature in batch]
        word_index = [_as_list(feature["word_index"]) for feature in batch]
        out = {
            "input_ids": _pad(input_ids, self.pad_token_id, torch.long),  # (B, T)
            "attention_mask": _pad([[1] * len(ids) for ids in input_ids], 0, torch.long),  # (B, T)
            "word_index": _pad(word_index, 0, torch.long),  # (B, W)
            "word_mask": _pad([[True] * len(index) for index in word_index], False, torch.bool),  # (B, W)
            "starts_line": torch.tensor([bool(f.get("starts_line", True)) for f in batch]),  # (B,)
            "ends_line": torch.tensor([bool(f.get("ends_line", True)) for f in batch]),  # (B,)
        }
        if all("labels" in feature for feature in batch):
            out["labels"] = _pad([_as_list(feature["labels"]) for feature in batch], IGNORE_INDEX, torch.long)
        return out


def gather_words(sequence: torch.Tensor, word_index: torch.Tensor) -> torch.Tensor:
    """(B, T, D) sub-token vectors -> (B, W, D) vectors of each word's first sub-token."""
    index = word_index.unsqueeze(-1).expand(-1, -1, sequence.size(-1))  # (B, W, D)
    return sequence.gather(1, index)


def _as_list(values: Any) -> list:
    return values.tolist() if isinstance(values, torch.Tensor) else list(values)


def _pad(rows: list[list], value: Any, dtype: torch.dtype) -> torch.Tensor:
    width = max((len(row) for row in rows), default=0)
    return torch.tensor([row + [value] * (width - len(row)) for row in rows], dtype=dtype)


class SplitFeatures(torch.utils.data.Dataset):
    """The training features of one annotated split (`features`), read from its file when asked for.

    Nothing is held per record but small arrays: one streaming pass checks every record and windows
    it, keeping where its line starts in the file and, for each feature (one window), its record,
    its rank among that record's windows and its sub-token count (`lengths`, for batches grouped by
    length). `dataset[i]` re-reads its record and windows it again, exactly as `features` does; the
    last record's features are kept, so a long line's windows read in a row are tokenized once.
    A slice gives a list of features.
    """

    def __init__(self, annotated: AnnotatedDir, split: str, words: WordTokenizer, label2id: Mapping[str, int]):
        self.path = annotated.split_path(split)
        self.words, self.label2id = words, label2id
        records = annotated.records(split)  # raises before any reading when the split is missing
        line_offsets = line_starts(self.path)
        starts, record_of, window_of, lengths = array("q"), array("q"), array("i"), array("i")
        for line_no, record in records:
            starts.append(int(line_offsets[line_no - 1]))
            for rank, window in enumerate(words.windows(record["tokens"])):
                record_of.append(len(starts) - 1)
                window_of.append(rank)
                lengths.append(len(window.input_ids))
        self._starts = np.frombuffer(starts, dtype=np.int64)
        self._record_of = np.frombuffer(record_of, dtype=np.int64)
        self._window_of = np.frombuffer(window_of, dtype=np.int32)
        self.lengths = np.frombuffer(lengths, dtype=np.int32)  # (features,) sub-tokens of each
        self._cached: tuple[int, list[dict[str, Any]]] = (-1, [])

    def __len__(self) -> int:
        return len(self._record_of)

    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self._features_of(int(self._record_of[index]))[int(self._window_of[index])]

    def _features_of(self, record: int) -> list[dict[str, Any]]:
        if self._cached[0] != record:
            self._cached = record, features([record_at(self.path, int(self._starts[record]))], self.words,
                                            self.label2id)
        return self._cached[1]


@dataclass
class TrainingData:
    """What distill, prune and finetune train or score on: windowed features of the train and val
    splits (read lazily from the annotated folder), their collator, the label map and the teacher's
    transition prior."""
    train: SplitFeatures
    val: SplitFeatures
    collator: NerCollator
    id2label: dict[int, str]
    transitions: dict[str, Any]


def load_training_data(annotated: AnnotatedDir, tokenizer: Any, max_length: int, stride: int) -> TrainingData:
    label2id = annotated.label2id()
    words = WordTokenizer(tokenizer, max_length, stride)
    train = SplitFeatures(annotated, "train", words, label2id)
    val = SplitFeatures(annotated, "val", words, label2id)
    log.info("training features: %d train, %d val windows", len(train), len(val))
    return TrainingData(train=train, val=val, collator=NerCollator(tokenizer.pad_token_id),
                        id2label={int(i): name for name, i in label2id.items()},
                        transitions=annotated.transitions())
