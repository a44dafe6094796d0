"""ONNX export of a CRF student: encoder + emissions as one graph, the CRF beside it as JSON.

The graph takes `input_ids`, `attention_mask` (B, T) and `word_index` (B, W) and returns
`emissions` (B, W, L), every axis dynamic. Viterbi stays outside the graph (a data-dependent loop
that ONNX expresses badly): `crf.json` holds the decoding weights with the IOB2 constraints already
applied, exactly those `CrfStudent.decode` uses, and `NerTagger.load(out_dir)` runs the same
Viterbi on onnxruntime's emissions. A pruned student exports with its uneven per-layer head counts
because it is loaded through `CrfStudent.from_pretrained`, which rebuilds them.

Output folder: `model.onnx` (fp32, or dynamically quantised int8 weights with `int8=True`),
`crf.json`, `nerdistill_onnx.json` (what the folder is, window settings, provenance) and the
tokenizer files. No pickle anywhere.
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nerdistill.data import NerCollator, WordTokenizer
from nerdistill.io import InputError, atomic_dir, write_json
from nerdistill.labels import ordered_labels
from nerdistill.model_folders import (CRF_FILE, ONNX_MANIFEST, load_tokenizer, model_kind, student_window,
                                      window_length)
from nerdistill.modeling import CrfStudent
from nerdistill.text import split_words

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
INPUTS = ("input_ids", "attention_mask", "word_index")
# Two lines of different lengths, so that the traced example has padding on both axes.
EXAMPLE_TEXTS = ("Le docteur Jean Martin a reçu Mme Durand à l'hôpital Saint-Louis de Paris.",
                 "Marie habite à Lyon.")


class EmissionsGraph(nn.Module):
    """The part of the student that ONNX runs: encoder and emissions, no CRF."""

    def __init__(self, student: CrfStudent) -> None:
        super().__init__()
        self.student = student

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, word_index: torch.Tensor) -> torch.Tensor:
        word_mask = torch.ones_like(word_index, dtype=torch.bool)  # (B, W), unused without labels
        return self.student(input_ids=input_ids, attention_mask=attention_mask, word_index=word_index,
                            word_mask=word_mask).emissions  # (B, W, L)


def export_onnx(model_dir: str | Path, out_dir: str | Path, int8: bool = False) -> dict[str, Any]:
    """Export the student in `model_dir` to `out_dir` (replaced atomically); returns a summary with
    the largest emission difference from PyTorch on an example batch."""
    kind, folder = model_kind(model_dir)
    if kind != "student":
        raise InputError(f"{model_dir}: export takes a CRF student folder (distill/prune/finetune output), "
                         f"this is a {kind} model")
    student = CrfStudent.from_pretrained(folder).float().eval()
    tokenizer = load_tokenizer(folder)
    max_length, stride = student_window(student.config, tokenizer)
    max_positions = window_length(student.config.encoder.max_position_embeddings, tokenizer)
    example = _example_batch(tokenizer, max_length, stride)
    with atomic_dir(out_dir) as tmp, tempfile.TemporaryDirectory(prefix="onnx_fp32_") as work:
        fp32_path = Path(work) / MODEL_FILE
        _export_graph(student, example, fp32_path)
        if int8:
            _quantize(fp32_path, tmp / MODEL_FILE)
        else:
            fp32_path.replace(tmp / MODEL_FILE)
        _write_crf(student, tmp / CRF_FILE)
        tokenizer.save_pretrained(tmp)
        manifest = {
            "format": "nerdistill-onnx", "model_file": MODEL_FILE, "inputs": list(INPUTS), "outputs": ["emissions"],
            "quantization": "dynamic-int8" if int8 else "none", "max_length": max_length, "stride": stride,
            "max_positions": max_positions, "source": str(model_dir), "head_counts": student.config.head_counts,
            "ffn_sizes": student.config.ffn_sizes, "provenance": student.config.provenance,
        }
        write_json(tmp / ONNX_MANIFEST, manifest)
        max_diff = _max_difference(student, tmp / MODEL_FILE, example)
        size = (tmp / MODEL_FILE).stat().st_size
    summary = {"out_dir": str(out_dir), "quantization": manifest["quantization"], "bytes": size,
               "max_abs_emission_diff": max_diff}
    log.info("exported %s to %s (%s, %.1f MB); largest emission difference from PyTorch %.2e", model_dir, out_dir,
             manifest["quantization"], size / 1e6, max_diff)
    return summary


def _example_batch(tokenizer: Any, max_length: int, stride: int) -> dict[str, torch.Tensor]:
    words = WordTokenizer(tokenizer, max_length, stride)
    windows = [words.windows([w.text for w in split_words(text)])[0] for text in EXAMPLE_TEXTS]
    batch = NerCollator(tokenizer.pad_token_id)([w.model_input() for w in windows])
    return {name: batch[name] for name in INPUTS}


def _export_graph(student: CrfStudent, example: dict[str, torch.Tensor], path: Path) -> None:
    batch, tokens, words = torch.export.Dim("batch"), torch.export.Dim("tokens"), torch.export.Dim("words")
    with warnings.catch_warnings(), _quiet_loggers("onnx_ir", "onnxscript", "torch.onnx", level=logging.ERROR):
        # Noise about the exporter itself, not this model: shared axes (input_ids and attention_mask
        # keep one name of two) and a deprecated call inside torch.export.
        warnings.filterwarnings("ignore", message=r".*The axis name: .* will not be used", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
        torch.onnx.export(
            EmissionsGraph(student).eval(), tuple(example[name] for name in INPUTS), str(path),
            input_names=list(INPUTS), output_names=["emissions"], dynamo=True, external_data=False,
            dynamic_shapes={"input_ids": {0: batch, 1: tokens}, "attention_mask": {0: batch, 1: tokens},
                            "word_index": {0: batch, 1: words}},
            verbose=False)


def _quantize(fp32_path: Path, int8_path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # Shape inference and graph clean-up first, as onnxruntime recommends; per-channel int8 weights
    # keep more entities identical to PyTorch than per-tensor ones. Activations are quantised on
    # the fly, so no calibration data is needed. The quantiser logs a line per tensor on the root logger.
    with _quiet_loggers(""):
        prepared = fp32_path.with_name("prepared.onnx")
        quant_pre_process(fp32_path, prepared)
        quantize_dynamic(prepared, int8_path, weight_type=QuantType.QInt8, per_channel=True)


@contextlib.contextmanager
def _quiet_loggers(*names: str, level: int = logging.WARNING) -> Iterator[None]:
    """Hold the named loggers ("" = root) at `level` or above: the exporter and the quantiser log a
    line per node, and torch.onnx warns about torchvision operators this model does not use."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), level))
    try:
        yield
    finally:
        for logger, previous in zip(loggers, levels):
            logger.setLevel(previous)


def _write_crf(student: CrfStudent, path: Path) -> None:
    start, end, transitions = student.constrained_transitions()
    write_json(path, {
        "labels": ordered_labels(student.config.id2label),
        "constraints": "IOB2: start -> I-X and X -> I-Y (Y != X's type) already set to modeling.FORBIDDEN",
        "start": start.tolist(), "end": end.tolist(), "transitions": transitions.tolist()})


def _max_difference(student: CrfStudent, model_path: Path, example: dict[str, torch.Tensor]) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    (emissions,) = session.run(["emissions"], {name: example[name].numpy() for name in INPUTS})  # (B, W, L)
    with torch.inference_mode():
        expected = EmissionsGraph(student)(*(example[name] for name in INPUTS)).numpy()  # (B, W, L)
    return float(np.abs(emissions - expected).max())
