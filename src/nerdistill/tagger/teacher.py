"""A token-classification teacher as a tagger: annotate, evaluate and bench tag it through here.

Its IO, IOB1 or IOB2 labels become IOB2; an entity's `score` is the mean softmax probability of its
argmax label. It reports every type it sees unless `drop_types` says otherwise (evaluate compares it
with the student on the student's label set that way). Nothing here imports the student model.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from nerdistill.io import InputError
from nerdistill.labels import ordered_labels
from nerdistill.model_folders import model_kind, window_length
from nerdistill.params import TeacherParams
from nerdistill.tagger.core import NerTagger, WindowLimits, WindowOutput, argmax_outputs, pick_device
from nerdistill.teacher import load_teacher, teacher_forward


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
        return argmax_outputs(logits.float().softmax(-1), batch["word_mask"], self.labels)


def folder_kind(path_or_hub_id: str | Path, source: str | None) -> tuple[str, Path]:
    """`model_folders.model_kind`, its errors prefixed with where the path came from (`source`)."""
    try:
        return model_kind(path_or_hub_id)
    except InputError as err:
        raise InputError(f"{source} = {str(path_or_hub_id)!r}: {err}" if source else str(err)) from err


def open_teacher(path_or_hub_id: str | Path, device: torch.device, source: str | None
                 ) -> tuple[TeacherBackend, PreTrainedTokenizerBase, WindowLimits]:
    """The backend, tokenizer and window limits of a teacher folder or hub id: windows of what its
    positions allow (at most 512 sub-tokens), a quarter of that shared."""
    try:
        model, tokenizer = load_teacher(path_or_hub_id, device, key=source or "the model")
    except OSError as err:
        raise InputError(str(err)) from err
    length = window_length(model.config.max_position_embeddings, tokenizer)
    return TeacherBackend(model, device), tokenizer, WindowLimits(length, length, length // 4)


def load_teacher_tagger(path_or_hub_id: str | Path, device: str | torch.device | None = None,
                        max_length: int | None = None, stride: int | None = None, drop_types: Iterable[str] = (),
                        batch_size: int = 32, source: str | None = None) -> NerTagger:
    """A tagger for a teacher folder or hub id (`tagger.load.load_tagger` for the options); a student or
    ONNX folder is refused, since its backend is not imported here."""
    device = pick_device(device)
    kind, _ = folder_kind(path_or_hub_id, source)
    if kind != "teacher":
        what = "an ONNX export" if kind == "onnx" else "a student"
        raise InputError(f"{source or 'the model'} = {str(path_or_hub_id)!r} is {what} folder, not a "
                         "token-classification teacher; point it at the teacher's folder or hub id")
    backend, tokenizer, limits = open_teacher(path_or_hub_id, device, source)
    return NerTagger.sized(backend, tokenizer, limits, max_length, stride, drop_types, batch_size, path_or_hub_id,
                           device)


def teacher_tagger(teacher: TeacherParams, device: str | torch.device | None = None,
                   drop_types: Iterable[str] = ()) -> NerTagger:
    """The teacher windowed as params say: `teacher.max_length` sub-tokens (at most what its
    positions take) sharing `teacher.stride`. annotate, evaluate and bench all tag the teacher
    through here, so its tags on a long line do not depend on which stage produced them."""
    tagger = load_teacher_tagger(teacher.model_name, device, drop_types=drop_types, batch_size=teacher.batch_size,
                                 source="teacher.model_name")
    length = min(teacher.max_length, tagger.max_length)
    return NerTagger(tagger.backend, tagger.words.tokenizer, length, min(teacher.stride, length // 2 - 1),
                     drop_types, teacher.batch_size)
