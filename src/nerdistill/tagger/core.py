"""`NerTagger`: texts in, entities with character offsets out, whatever model tags the windows.

Texts are split into words by `text.split_words`, so entities carry both character offsets into
the input (`text[start:end] == entity["text"]`) and word indices (`token_start`, `token_end`,
end exclusive). Lines longer than the model's window are read in overlapping windows and each word
takes the label of the window that owns it (`data.WordTokenizer`); windows run in sorted-length
batches, never all at once, so a 200,000-word line needs memory for one batch of windows.

The model behind a tagger is a `Backend` (tagger.teacher, tagger.student, tagger.onnx): it says,
for each window of a collated batch, a label, its score and the distribution over its labels per
word. `tagger.load.load_tagger` picks the backend by what a model folder is.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from nerdistill.data import NerCollator, Window, WordTokenizer
from nerdistill.io import InputError
from nerdistill.labels import student_labels
from nerdistill.text import Word, entity_spans, iob1_to_iob2, split_words
from nerdistill.text import drop_types as drop_entity_types  # `drop_types` names the tagger's option

log = logging.getLogger(__name__)


class WindowOutput(NamedTuple):
    """What a backend says about the real words of one window."""

    labels: list[str]
    scores: list[float]
    probs: torch.Tensor  # (n, L) on the CPU: each word's distribution over the backend's labels


class TaggedLine(NamedTuple):
    """One stitched line: IOB2 tags (drop_types applied), their scores and, when asked, the (n, L)
    distributions over the backend's labels they came from."""

    tags: list[str]
    scores: list[float]
    probs: torch.Tensor | None


class Backend(Protocol):
    """One `WindowOutput` per row of a collated batch of windows."""

    kind: str
    labels: list[str]

    def predict(self, batch: dict[str, torch.Tensor]) -> list[WindowOutput]: ...


class WindowLimits(NamedTuple):
    """What a model's windows may hold: at most `limit` sub-tokens; by default `length` of them,
    `stride` shared by two consecutive windows."""

    limit: int
    length: int
    stride: int


def with_scores(probs: torch.Tensor, paths: list[list[int]], labels: Sequence[str]) -> list[WindowOutput]:
    """Each path's labels, the probability `probs` (B, W, L) gives each chosen label, and its rows."""
    probs = probs.cpu()  # one copy per batch, not one per row
    out = []
    for row, path in enumerate(paths):
        chosen = probs[row, torch.arange(len(path)), torch.tensor(path, dtype=torch.long)]  # (n,)
        out.append(WindowOutput([labels[i] for i in path], chosen.tolist(), probs[row, :len(path)]))
    return out


def argmax_outputs(probs: torch.Tensor, word_mask: torch.Tensor, labels: Sequence[str]) -> list[WindowOutput]:
    """A teacher's decoding: each real word's most probable label in `probs` (B, W, L), no transitions."""
    best = probs.argmax(-1)  # (B, W)
    lengths = word_mask.sum(dim=1).tolist()
    return with_scores(probs, [best[row, :n].tolist() for row, n in enumerate(lengths)], labels)


def pick_device(device: str | torch.device | None) -> torch.device:
    """`device` as given, else the GPU when there is one."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


class NerTagger:
    """Tags texts (`tagger(texts)`) or pre-split sentences (`tagger.tag_words(sentences)`)."""

    def __init__(self, backend: Backend, tokenizer: PreTrainedTokenizerBase, max_length: int, stride: int,
                 drop_types: Iterable[str] = (), batch_size: int = 32) -> None:
        self.backend = backend
        self.words = WordTokenizer(tokenizer, max_length, stride)
        self.collator = NerCollator(tokenizer.pad_token_id)
        self.drop_types = tuple(drop_types)
        self.batch_size = batch_size
        self.max_length, self.stride = max_length, stride

    @classmethod
    def sized(cls, backend: Backend, tokenizer: PreTrainedTokenizerBase, limits: WindowLimits,
              max_length: int | None, stride: int | None, drop_types: Iterable[str], batch_size: int,
              path_or_hub_id: str | Path, device: torch.device) -> NerTagger:
        """A tagger over `backend` with windows of `max_length` sub-tokens sharing `stride`, each
        defaulting to `limits` (a `max_length` given alone gets a quarter of it as stride)."""
        if max_length is not None and not 8 <= max_length <= limits.limit:
            raise InputError(f"max_length={max_length}: {path_or_hub_id} takes windows of 8 to {limits.limit} "
                             "sub-tokens")
        length = max_length or limits.length
        if stride is None:
            stride = limits.stride if max_length is None else length // 4
        tagger = cls(backend, tokenizer, length, stride, drop_types, batch_size)
        log.info("%s tagger from %s on %s: labels %s, windows of %d sub-tokens (stride %d)", backend.kind,
                 path_or_hub_id, device, tagger.labels, tagger.max_length, tagger.stride)
        return tagger

    @property
    def kind(self) -> str:
        return self.backend.kind

    @property
    def window(self) -> tuple[int, int]:
        """(max_length, stride): sub-tokens per window, and shared by two consecutive windows."""
        return self.max_length, self.stride

    @property
    def labels(self) -> list[str]:
        """The IOB2 labels this tagger can output (after `drop_types`)."""
        return student_labels(dict(enumerate(self.backend.labels)), self.drop_types)

    def __call__(self, texts: Sequence[str], batch_size: int | None = None) -> list[list[dict[str, Any]]]:
        """Entities of each text: `{"text", "type", "start", "end", "token_start", "token_end", "score"}`."""
        if isinstance(texts, str):  # a str is a sequence too: each character would be tagged as a text
            raise TypeError("NerTagger(texts): pass a list of texts, e.g. tagger([text]), not one str")
        words = [split_words(text) for text in texts]
        tagged = self._tag([[word.text for word in line] for line in words], batch_size, self.drop_types)
        return [_entities(text, line, tagged_line.tags, tagged_line.scores)
                for text, line, tagged_line in zip(texts, words, tagged)]

    def tag_words(self, sentences: Sequence[Sequence[str]], batch_size: int | None = None,
                  drop_types: Iterable[str] | None = None, progress: str | None = None) -> list[list[str]]:
        """IOB2 tags of pre-split words, one list per sentence; `drop_types` overrides the tagger's;
        `progress` names a progress bar over the batches (none when unset)."""
        dropped = self.drop_types if drop_types is None else tuple(drop_types)
        return [line.tags for line in self._tag(sentences, batch_size, dropped, progress)]

    def tag_words_with_probs(self, sentences: Sequence[Sequence[str]], progress: str | None = None
                             ) -> tuple[list[list[str]], list[torch.Tensor]]:
        """`tag_words`' tags and, per sentence, each word's (n, L) distribution over `backend.labels`
        (the model's own labels, before IOB2 and drop_types), read from the window that owns the word."""
        lines = self._tag(sentences, None, self.drop_types, progress, with_probs=True)
        return [line.tags for line in lines], [line.probs for line in lines]

    @torch.inference_mode()
    def _tag(self, sentences: Sequence[Sequence[str]], batch_size: int | None, dropped: tuple[str, ...],
             progress: str | None = None, with_probs: bool = False) -> list[TaggedLine]:
        if isinstance(sentences, str) or any(isinstance(words, str) for words in sentences):
            raise TypeError("tag_words(sentences): pass a list of sentences, each a list of words, e.g. "
                            "tagger.tag_words([text.split()]); a str would be read one character a word")
        tags: list[list[str]] = [[""] * len(words) for words in sentences]
        scores: list[list[float]] = [[0.0] * len(words) for words in sentences]
        probs = [torch.zeros(len(words), len(self.backend.labels)) if with_probs else None for words in sentences]
        tagged = self._windows_tagged(sentences, batch_size or self.batch_size, progress)
        for line, window, output in tagged:
            owned = [k for k, mine in enumerate(window.owned) if mine]
            for k in owned:
                tags[line][window.word_ids[k]], scores[line][window.word_ids[k]] = output.labels[k], output.scores[k]
            if with_probs and owned:
                words = torch.tensor([window.word_ids[k] for k in owned])
                probs[line][words] = output.probs[torch.tensor(owned)].float()
        # Stitching can leave an I-X after a window edge whose other side said O; reading it as
        # B-X (as iob1_to_iob2 does) keeps the output valid IOB2, and IO teachers become IOB2 here.
        return [TaggedLine(drop_entity_types(iob1_to_iob2(line), dropped), line_scores, line_probs)
                for line, line_scores, line_probs in zip(tags, scores, probs)]

    def _windows_tagged(self, sentences: Sequence[Sequence[str]], batch_size: int, progress: str | None = None
                        ) -> Iterator[tuple[int, Window, WindowOutput]]:
        """(line, window, backend output) for every window, run in batches of similar length."""
        flat = [(line, window) for line, words in enumerate(sentences) for window in self.words.windows(words)]
        # Similar lengths together: far less padding, so far less wasted compute.
        flat.sort(key=lambda item: len(item[1].input_ids))
        for begin in tqdm(range(0, len(flat), batch_size), desc=progress, unit="batch", disable=progress is None):
            chunk = flat[begin:begin + batch_size]
            batch = self.collator([window.model_input() for _, window in chunk])
            for (line, window), output in zip(chunk, self.backend.predict(batch)):
                yield line, window, output


def _entities(text: str, words: list[Word], tags: list[str], scores: list[float]) -> list[dict[str, Any]]:
    entities = []
    for entity_type, first, last in entity_spans(tags):
        start, end = words[first].start, words[last - 1].end
        entities.append({"text": text[start:end], "type": entity_type, "start": start, "end": end,
                         "token_start": first, "token_end": last,
                         "score": round(sum(scores[first:last]) / (last - first), 4)})
    return entities
