"""`load_tagger`: a tagger for any model folder or hub id, its backend picked by what the folder is
(`model_folders.model_kind`): a CRF student, an ONNX export, or a token-classification teacher.

It imports every backend; a stage that tags only the teacher imports `tagger.teacher` instead.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from nerdistill.params import TeacherParams
from nerdistill.tagger.core import NerTagger, pick_device
from nerdistill.tagger.onnx import open_onnx
from nerdistill.tagger.student import open_student
from nerdistill.tagger.teacher import folder_kind, open_teacher, teacher_tagger


def load_tagger(path_or_hub_id: str | Path, device: str | torch.device | None = None,
                max_length: int | None = None, stride: int | None = None, drop_types: Iterable[str] = (),
                batch_size: int = 32, threads: int | None = None, source: str | None = None) -> NerTagger:
    """A tagger for a student folder, an ONNX export folder, a teacher folder or a hub id.
    `source` names where the path came from (`--model`, `teacher.model_name`), so errors say what to fix.

    `max_length`/`stride` (sub-tokens per window / shared by two windows) default to the
    student's training settings from its provenance, else to what the model's positions allow
    (at most 512) and a quarter of that; a `max_length` given alone gets a quarter of it as
    stride. `threads` sets onnxruntime's intra-op threads (torch's are the caller's to set).
    """
    device = pick_device(device)
    kind, folder = folder_kind(path_or_hub_id, source)
    if kind == "onnx":
        backend, tokenizer, limits = open_onnx(folder, device, threads)
    elif kind == "student":
        backend, tokenizer, limits = open_student(folder, device)
    else:
        backend, tokenizer, limits = open_teacher(path_or_hub_id, device, source)
    return NerTagger.sized(backend, tokenizer, limits, max_length, stride, drop_types, batch_size, path_or_hub_id,
                           device)


def compared_tagger(path: str, teacher: TeacherParams, device: str | torch.device | None = None,
                    threads: int | None = None) -> NerTagger:
    """The tagger a stage compares: the teacher (`path` is `teacher.model_name`) windowed from params,
    any other folder as it was saved."""
    if path == teacher.model_name:
        return teacher_tagger(teacher, device)
    return load_tagger(path, device, threads=threads)
