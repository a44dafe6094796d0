"""ONNX export of a CRF student: encoder + emissions as one graph, the CRF beside it as JSON.

The graph takes `input_ids`, `attention_mask` (B, T) and `word_index` (B, W) and returns
`emissions` (B, W, L), every axis dynamic. Viterbi stays outside the graph (a data-dependent loop
that ONNX expresses badly): `crf.json` holds the decoding weights with the IOB2 constraints already
applied, exactly those `CrfStudent.decode` uses, and `tagger.load.load_tagger(out_dir)` runs the same
Viterbi on onnxruntime's emissions. A pruned student exports with its uneven per-layer head counts
because it is loaded through `CrfStudent.from_pretrained`, which rebuilds them.

`export_student` takes the student and its tokenizer in memory (the export stage trims the
vocabulary first), traces the graph once and writes two folders: fp32, and the same graph
dynamically quantised to int8 (weights of every MatMul, per channel or per tensor, and, unless
told otherwise, the embedding tables behind the Gather nodes). Each folder: `model.onnx`,
`crf.json`, `nerdistill_onnx.json` (what the folder is, window settings, parameter count,
provenance) and the tokenizer files. No pickle anywhere.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from nerdistill.data import NerCollator, WordTokenizer
from nerdistill.io import InputError, atomic_dir, write_json
from nerdistill.labels import ordered_labels
from nerdistill.model_folders import (CRF_FILE, ONNX_MANIFEST, load_tokenizer, model_kind, student_window,
                                      window_length)
from nerdistill.modeling import CrfStudent, parameter_count
from nerdistill.params import ExportParams
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


def load_student(model_dir: str | Path) -> tuple[CrfStudent, PreTrainedTokenizerBase]:
    """The fp32 student and tokenizer of a student folder; anything else is refused, naming what it is."""
    kind, folder = model_kind(model_dir)
    if kind != "student":
        raise InputError(f"{model_dir}: export takes a CRF student folder (distill/prune/finetune output), "
                         f"this is a {kind} model")
    return CrfStudent.from_pretrained(folder).float().eval(), load_tokenizer(folder)


def export_student(student: CrfStudent, tokenizer: PreTrainedTokenizerBase, fp32_dir: str | Path,
                   int8_dir: str | Path, settings: ExportParams, source: str) -> dict[str, dict[str, Any]]:
    """Trace `student` once, write it to `fp32_dir` and its int8 quantisation to `int8_dir` (each
    replaced atomically). Returns {"fp32" | "int8": {"bytes", "max_abs_emission_diff"}}, the largest
    emission difference from PyTorch on an example batch; `source` is recorded in the manifests."""
    student = student.float().eval()
    max_length, stride = student_window(student.config, tokenizer)
    example = _example_batch(tokenizer, max_length, stride)
    manifest = {
        "format": "nerdistill-onnx", "model_file": MODEL_FILE, "inputs": list(INPUTS), "outputs": ["emissions"],
        "max_length": max_length, "stride": stride,
        "max_positions": window_length(student.config.encoder.max_position_embeddings, tokenizer),
        "parameters": parameter_count(student), "vocab_size": len(tokenizer),
        "source": source, "head_counts": student.config.head_counts,
        "ffn_sizes": student.config.ffn_sizes, "provenance": student.config.provenance,
    }
    int8_manifest = {**manifest, "quantization": "dynamic-int8", "per_channel": settings.per_channel,
                     "quantized_ops": list(_quantized_ops(settings))}
    summaries = {}
    with tempfile.TemporaryDirectory(prefix="onnx_fp32_") as work:
        graph = Path(work) / MODEL_FILE
        _export_graph(student, example, graph)
        for name, out_dir, folder_manifest in (("fp32", fp32_dir, {**manifest, "quantization": "none"}),
                                               ("int8", int8_dir, int8_manifest)):
            with atomic_dir(out_dir) as tmp:
                if name == "int8":
                    _quantize(graph, tmp / MODEL_FILE, settings)
                else:
                    shutil.copyfile(graph, tmp / MODEL_FILE)
                _write_crf(student, tmp / CRF_FILE)
                tokenizer.save_pretrained(tmp)
                write_json(tmp / ONNX_MANIFEST, folder_manifest)
                summaries[name] = {"bytes": (tmp / MODEL_FILE).stat().st_size,
                                   "max_abs_emission_diff": _max_difference(student, tmp / MODEL_FILE, example)}
            log.info("exported %s to %s (%s, %.2f MB); largest emission difference from PyTorch %.2e", source,
                     out_dir, folder_manifest["quantization"], summaries[name]["bytes"] / 1e6,
                     summaries[name]["max_abs_emission_diff"])
    return summaries


def _example_batch(tokenizer: Any, max_length: int, stride: int) -> dict[str, torch.Tensor]:
    words = WordTokenizer(tokenizer, max_length, stride)
    windows = [words.windows([w.text for w in split_words(text)])[0] for text in EXAMPLE_TEXTS]
    batch = NerCollator(tokenizer.pad_token_id)([w.model_input() for w in windows])
    return {name: batch[name] for name in INPUTS}


def _export_graph(student: CrfStudent, example: dict[str, torch.Tensor], path: Path) -> None:
    batch, tokens, words = torch.export.Dim("batch"), torch.export.Dim("tokens"), torch.export.Dim("words")
    with (warnings.catch_warnings(), _quiet_loggers("onnx_ir", "onnxscript", "torch.onnx", level=logging.ERROR),
          _eager_attention(student)):
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
    _strip_origins(path)


@contextlib.contextmanager
def _eager_attention(student: CrfStudent) -> Iterator[None]:
    """Export eager attention, not SDPA: the exporter writes SDPA as matmuls plus an IsNaN/Where guard
    on every attention map, a quarter of the int8 graph's time on the real stand-in student; the eager
    graph computes the same emissions and ran 29 % faster in int8 (2 threads, 350 sub-tokens)."""
    previous = student.encoder.config._attn_implementation
    student.encoder.set_attn_implementation("eager")
    try:
        yield
    finally:
        student.encoder.set_attn_implementation(previous)


def _strip_origins(path: Path) -> None:
    """Drop the PyTorch origin the exporter writes on every node (module path, FX node, stack trace):
    a debugging aid, not model, and a third of a small student's file, which would make the fp32
    export look bigger than its weights (the quantiser drops it from the int8 one anyway)."""
    import onnx

    model = onnx.load(str(path))
    for entry in (*model.graph.node, *model.graph.value_info):
        del entry.metadata_props[:]
    onnx.save(model, str(path))


def _quantized_ops(settings: ExportParams) -> tuple[str, ...]:
    # Named, not onnxruntime's default list (which also holds Conv, Attention, LSTM, Transpose,
    # EmbedLayerNormalization), so what is quantised does not change with its release. Gather reads
    # the word, position and type embeddings; left in fp32 they stay 4 bytes a value while the
    # MatMul weights shrink to 1: the demo student's int8 file was then 0.58 of its fp32 one, not
    # 0.30, and a CamemBERT-base student would keep 98 MB of fp32 word vectors.
    return ("MatMul", "Gather") if settings.quantize_embeddings else ("MatMul",)


def _quantize(fp32_path: Path, int8_path: Path, settings: ExportParams) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # ONNX shape inference and graph clean-up first, as onnxruntime recommends. Its symbolic shape
    # inference is skipped: it gives up on BERT graphs ("Incomplete symbolic shape inference" on the
    # position ids' Min(max_positions, tokens)), and dynamic quantisation of weights needs no symbolic
    # activation shapes. Per-channel int8 weights
    # keep more entities identical to PyTorch than per-tensor ones (embedding tables get one scale
    # each either way). Activations are quantised on the fly, so no calibration data is needed. The
    # quantiser logs a line per tensor on the root logger.
    with _quiet_loggers(""), tempfile.TemporaryDirectory(prefix="onnx_prepared_") as work:
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(fp32_path, prepared, skip_symbolic_shape=True)
        quantize_dynamic(prepared, int8_path, weight_type=QuantType.QInt8, per_channel=settings.per_channel,
                         op_types_to_quantize=list(_quantized_ops(settings)))


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
        "constraints": "IOB2: start -> I-X and X -> I-Y (Y != X's type) already set to crf.FORBIDDEN",
        "start": start.tolist(), "end": end.tolist(), "transitions": transitions.tolist()})


def _max_difference(student: CrfStudent, model_path: Path, example: dict[str, torch.Tensor]) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    (emissions,) = session.run(["emissions"], {name: example[name].numpy() for name in INPUTS})  # (B, W, L)
    with torch.inference_mode():
        expected = EmissionsGraph(student)(*(example[name] for name in INPUTS)).numpy()  # (B, W, L)
    return float(np.abs(emissions - expected).max())
