"""`NerTagger`: texts in, entities with character offsets out, for a student, a teacher or an ONNX export.

`NerTagger.load(path_or_hub_id)` reads what the folder is (`model_folders.model_kind`):

- a CRF student (`config.json` with model_type `nerdistill-crf-student`): constrained Viterbi over
  the emissions; an entity's `score` is the mean, over its words, of the softmax of the emissions
  at the decoded label (cheap, and monotone in the evidence; CRF marginals would also weigh the
  transitions but cost a forward-backward pass per batch);
- an ONNX export (`nerdistill_onnx.json`, written by `nerdistill.export`): the same emissions from
  onnxruntime, the same Viterbi with the transitions saved at export time, the same score;
- anything else with a `config.json`, or a hub id: a token-classification teacher. Its IO, IOB1 or
  IOB2 labels become IOB2; its `score` is the mean softmax probability of its argmax label. It
  reports every type it sees unless `drop_types` says otherwise (evaluate compares it with the
  student on the student's label set that way).

Texts are split into words by `text.split_words`, so entities carry both character offsets into
the input (`text[start:end] == entity["text"]`) and word indices (`token_start`, `token_end`,
end exclusive). Lines longer than the model's window are read in overlapping windows and each word
takes the label of the window that owns it (`data.WordTokenizer`); windows run in sorted-length
batches, never all at once, so a 200,000-word line needs memory for one batch of windows.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from nerdistill.data import NerCollator, Window, WordTokenizer
from nerdistill.io import InputError, read_json
from nerdistill.labels import ordered_labels, student_labels
from nerdistill.model_folders import (CRF_FILE, ONNX_MANIFEST, load_tokenizer, model_kind, student_window,
                                      window_length)
from nerdistill.modeling import CrfStudent, viterbi
from nerdistill.teacher import load_teacher, teacher_forward
from nerdistill.params import TeacherParams
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


@dataclass(frozen=True)
class CrfWeights:
    """Decoding weights of a CRF with the IOB2 constraints already applied (impossible moves ~ -1e4)."""

    start: torch.Tensor  # (L,)
    end: torch.Tensor  # (L,)
    transitions: torch.Tensor  # (L, L), [previous, next]

    def decode(self, emissions: torch.Tensor, batch: dict[str, torch.Tensor], labels: Sequence[str]
               ) -> list[WindowOutput]:
        """Windows cut from a longer line get no start or end score where the cut is, as in training."""
        emissions = emissions.float()  # (B, W, L)
        paths = viterbi(emissions, batch["word_mask"].bool(), self.start, self.end, self.transitions,
                        batch["starts_line"], batch["ends_line"])
        return _with_scores(emissions.softmax(-1), paths, labels)


def _with_scores(probs: torch.Tensor, paths: list[list[int]], labels: Sequence[str]) -> list[WindowOutput]:
    """Each path's labels, the probability `probs` (B, W, L) gives each chosen label, and its rows."""
    probs = probs.cpu()  # one copy per batch, not one per row
    out = []
    for row, path in enumerate(paths):
        chosen = probs[row, torch.arange(len(path)), torch.tensor(path, dtype=torch.long)]  # (n,)
        out.append(WindowOutput([labels[i] for i in path], chosen.tolist(), probs[row, :len(path)]))
    return out


class StudentBackend:
    kind = "student"

    def __init__(self, model: CrfStudent, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.labels = ordered_labels(model.config.id2label)
        start, end, moves = model.constrained_transitions()
        self.crf = CrfWeights(start.float(), end.float(), moves.float())

    def predict(self, batch: dict[str, torch.Tensor]) -> list[WindowOutput]:
        batch = {key: value.to(self.device) for key, value in batch.items()}
        emissions = self.model(**batch).emissions  # (B, W, L)
        return self.crf.decode(emissions, batch, self.labels)


class TeacherBackend:
    """A token-classification model read at each word's first sub-token; labels stay in its own scheme
    (IO, IOB1 or IOB2) until the whole line is stitched, then become IOB2."""

    kind = "teacher"

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.labels = ordered_labels(model.config.id2label)

    def predict(self, batch: dict[str, torch.Tensor]) -> list[WindowOutput]:
        batch = {key: value.to(self.device) for key, value in batch.items()}
        logits, _ = teacher_forward(self.model, batch, output_hidden_states=False)  # (B, W, Lt)
        probs = logits.float().softmax(-1)  # (B, W, Lt)
        best = probs.argmax(-1)  # (B, W)
        lengths = batch["word_mask"].sum(dim=1).tolist()
        return _with_scores(probs, [best[row, :n].tolist() for row, n in enumerate(lengths)], self.labels)


class OnnxBackend:
    """The exported encoder + emissions under onnxruntime; Viterbi with the exported CRF weights."""

    kind = "onnx"

    def __init__(self, folder: Path, manifest: dict[str, Any], device: torch.device, threads: int | None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        # onnxruntime's threads otherwise spin on the cores after each run, taking them from whatever
        # runs next in the process: bench interleaves variants in one process, and there every
        # variant, PyTorch ones too, measured 2-4x slower (real stand-in student, 2 threads).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(folder / manifest["model_file"]), options, providers=providers)
        self.input_names = [node.name for node in self.session.get_inputs()]
        # The exported student's PyTorch count (the graph's initialisers also hold quantisation scales).
        self.parameters: int | None = manifest.get("parameters")
        crf = read_json(folder / CRF_FILE)
        self.labels = list(crf["labels"])
        self.crf = CrfWeights(*(torch.tensor(crf[key], dtype=torch.float32) for key in ("start", "end", "transitions")))

    def predict(self, batch: dict[str, torch.Tensor]) -> list[WindowOutput]:
        feeds = {name: batch[name].numpy() for name in self.input_names}
        emissions = torch.from_numpy(self.session.run(["emissions"], feeds)[0])  # (B, W, L)
        return self.crf.decode(emissions, batch, self.labels)


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
    def load(cls, path_or_hub_id: str | Path, device: str | torch.device | None = None,
             max_length: int | None = None, stride: int | None = None, drop_types: Iterable[str] = (),
             batch_size: int = 32, threads: int | None = None, source: str | None = None) -> NerTagger:
        """A tagger for a student folder, an ONNX export folder, a teacher folder or a hub id.
        `source` names where the path came from (`--model`, `teacher.model_name`), so errors say what to fix.

        `max_length`/`stride` (sub-tokens per window / shared by two windows) default to the
        student's training settings from its provenance, else to what the model's positions allow
        (at most 512) and a quarter of that; a `max_length` given alone gets a quarter of it as
        stride. `threads` sets onnxruntime's intra-op threads (torch's are the caller's to set).
        """
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        try:
            kind, folder = model_kind(path_or_hub_id)
        except InputError as err:
            raise InputError(f"{source} = {str(path_or_hub_id)!r}: {err}" if source else str(err)) from err
        if kind == "onnx":
            manifest = read_json(folder / ONNX_MANIFEST)
            backend: Backend = OnnxBackend(folder, manifest, device, threads)
            tokenizer = load_tokenizer(folder)
            limit = manifest["max_positions"]
            default_length, default_stride = manifest["max_length"], manifest["stride"]
        elif kind == "student":
            model = CrfStudent.from_pretrained(folder)
            backend, tokenizer = StudentBackend(model, device), load_tokenizer(folder)
            limit = window_length(model.config.encoder.max_position_embeddings, tokenizer)
            default_length, default_stride = student_window(model.config, tokenizer)
        else:
            try:
                model, tokenizer = load_teacher(path_or_hub_id, device, key=source or "the model")
            except OSError as err:
                raise InputError(str(err)) from err
            backend = TeacherBackend(model, device)
            limit = default_length = window_length(model.config.max_position_embeddings, tokenizer)
            default_stride = default_length // 4
        if max_length is not None and not 8 <= max_length <= limit:
            raise InputError(f"max_length={max_length}: {path_or_hub_id} takes windows of 8 to {limit} sub-tokens")
        length = max_length or default_length
        if stride is None:
            stride = default_stride if max_length is None else length // 4
        tagger = cls(backend, tokenizer, length, stride, drop_types, batch_size)
        log.info("%s tagger from %s on %s: labels %s, windows of %d sub-tokens (stride %d)", kind,
                 path_or_hub_id, device, tagger.labels, tagger.max_length, tagger.stride)
        return tagger

    @classmethod
    def for_teacher(cls, teacher: TeacherParams, device: str | torch.device | None = None,
                    drop_types: Iterable[str] = (), threads: int | None = None) -> NerTagger:
        """The teacher windowed as params say: `teacher.max_length` sub-tokens (at most what its
        positions take) sharing `teacher.stride`. annotate, evaluate and bench all tag the teacher
        through here, so its tags on a long line do not depend on which stage produced them."""
        tagger = cls.load(teacher.model_name, device, drop_types=drop_types, batch_size=teacher.batch_size,
                          threads=threads, source="teacher.model_name")
        length = min(teacher.max_length, tagger.max_length)
        return cls(tagger.backend, tagger.words.tokenizer, length, min(teacher.stride, length // 2 - 1),
                   drop_types, teacher.batch_size)

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


def load_tagger(path: str, teacher: TeacherParams, device: str | torch.device | None = None,
                threads: int | None = None) -> NerTagger:
    """The tagger a stage compares: the teacher (`path` is `teacher.model_name`) windowed from params,
    any other folder as it was saved."""
    if path == teacher.model_name:
        return NerTagger.for_teacher(teacher, device, threads=threads)
    return NerTagger.load(path, device, threads=threads)


def _entities(text: str, words: list[Word], tags: list[str], scores: list[float]) -> list[dict[str, Any]]:
    entities = []
    for entity_type, first, last in entity_spans(tags):
        start, end = words[first].start, words[last - 1].end
        entities.append({"text": text[start:end], "type": entity_type, "start": start, "end": end,
                         "token_start": first, "token_end": last,
                         "score": round(sum(scores[first:last]) / (last - first), 4)})
    return entities
