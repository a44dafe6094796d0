"""ONNX export of a CRF student (encoder + emissions as one graph, the CRF beside it as JSON) or of a teacher.

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
provenance) and the tokenizer files. No pickle anywhere. Both are staged beside their outputs and
swapped in together; nothing is written outside the outputs' folder.

`export_teacher` sends a token-classification teacher down the same path, int8 only (what a user gets
without distilling): its `emissions` are its logits at each word's first sub-token, decoded by argmax
in its own IO/IOB labels (listed in the manifest), so its folder has no `crf.json`.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from nerdistill.data import NerCollator, WordTokenizer, gather_words
from nerdistill.io import InputError, atomic_dir, write_json
from nerdistill.labels import ordered_labels
from nerdistill.model_folders import (CRF_FILE, EXPORTED_TEACHER, ONNX_MANIFEST, check_vocabulary, load_tokenizer,
                                      model_kind, student_window, window_length)
from nerdistill.modeling import CrfStudent, parameter_count
from nerdistill.onnx_session import inference_session
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


class TeacherGraph(nn.Module):
    """A token-classification teacher's logits at each word's first sub-token (`teacher.teacher_forward`'s)."""

    def __init__(self, teacher: PreTrainedModel) -> None:
        super().__init__()
        self.teacher = teacher

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, word_index: torch.Tensor) -> torch.Tensor:
        logits = self.teacher(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, T, Lt)
        return gather_words(logits, word_index)  # (B, W, Lt)


def load_student(model_dir: str | Path) -> tuple[CrfStudent, PreTrainedTokenizerBase]:
    """The fp32 student and tokenizer of a student folder; anything else is refused, naming what it is."""
    kind, folder = model_kind(model_dir)
    if kind != "student":
        raise InputError(f"{model_dir}: export takes a CRF student folder (distill/prune/finetune output), "
                         f"this is a {kind} model")
    student, tokenizer = CrfStudent.from_pretrained(folder).float().eval(), load_tokenizer(folder)
    check_vocabulary(folder, tokenizer, student.config.encoder.vocab_size)
    return student, tokenizer


def export_student(student: CrfStudent, tokenizer: PreTrainedTokenizerBase, fp32_dir: str | Path,
                   int8_dir: str | Path, settings: ExportParams, source: str) -> dict[str, dict[str, Any]]:
    """Trace `student` once, write it to `fp32_dir` and its int8 quantisation to `int8_dir` (both replaced
    together, see `_staged`). Returns {"fp32" | "int8": {"bytes", "max_abs_emission_diff"}}, the largest
    emission difference from PyTorch on an example batch; `source` is recorded in the manifests."""
    student, window = student.float().eval(), student_window(student.config, tokenizer)
    example = _example_batch(tokenizer, *window)
    described = {"head_counts": student.config.head_counts, "ffn_sizes": student.config.ffn_sizes,
                 "provenance": student.config.provenance}
    graph, summaries = EmissionsGraph(student).eval(), {}
    with _staged(Path(fp32_dir), Path(int8_dir)) as (fp32_tmp, int8_tmp):
        _export_graph(graph, student.encoder, example, fp32_tmp / MODEL_FILE)
        _quantize(fp32_tmp / MODEL_FILE, int8_tmp / MODEL_FILE, settings)
        for name, tmp, quantized in (("fp32", fp32_tmp, None), ("int8", int8_tmp, settings)):
            _write_crf(student, tmp / CRF_FILE)
            tokenizer.save_pretrained(tmp)
            write_json(tmp / ONNX_MANIFEST, {**_manifest("student", student, student.config.encoder, tokenizer,
                                                         window, source, quantized), **described})
            summaries[name] = {"bytes": (tmp / MODEL_FILE).stat().st_size,
                               "max_abs_emission_diff": _max_difference(graph, tmp / MODEL_FILE, example)}
    log.info("exported %s to %s and %s (bytes, largest emission difference from PyTorch): %s", source, fp32_dir,
             int8_dir, summaries)
    return summaries


def export_teacher(teacher: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path,
                   settings: ExportParams, source: str, window: tuple[int, int]) -> dict[str, Any]:
    """Trace `teacher` (logits at each word's first sub-token) and write its int8 quantisation to `out_dir`
    (replaced atomically), with `window` (max_length, stride) as its tagger's default. Returns the folder's
    manifest with "max_abs_emission_diff", the largest logit difference from PyTorch on an example batch."""
    teacher = teacher.float().eval()
    graph, example = TeacherGraph(teacher).eval(), _example_batch(tokenizer, *window)
    manifest = {**_manifest(EXPORTED_TEACHER, teacher, teacher.config, tokenizer, window, source, settings),
                "labels": ordered_labels(teacher.config.id2label), "decoding": "argmax, in the teacher's labels"}
    with _staged(Path(out_dir)) as (tmp,), _scratch_beside(tmp / MODEL_FILE) as work:
        _export_graph(graph, teacher, example, work / "fp32.onnx")  # the traced graph: quantised, then dropped
        _quantize(work / "fp32.onnx", tmp / MODEL_FILE, settings)
        tokenizer.save_pretrained(tmp)
        manifest["bytes"] = (tmp / MODEL_FILE).stat().st_size
        write_json(tmp / ONNX_MANIFEST, manifest)
        difference = _max_difference(graph, tmp / MODEL_FILE, example)
    log.info("exported the teacher %s to %s (int8, %.2f MB); largest logit difference from PyTorch %.2e", source,
             out_dir, manifest["bytes"] / 1e6, difference)
    return {**manifest, "max_abs_emission_diff": difference}


def _manifest(exported: str, model: nn.Module, encoder_config: Any, tokenizer: PreTrainedTokenizerBase,
              window: tuple[int, int], source: str, quantized: ExportParams | None) -> dict[str, Any]:
    """What every export folder's `nerdistill_onnx.json` says: what was exported, its graph, default window
    (max_length, stride) and the largest one its positions take, its PyTorch parameter count, and its
    quantisation (`quantized`: the int8 settings, None for fp32)."""
    int8 = {} if quantized is None else {"per_channel": quantized.per_channel,
                                         "quantized_ops": list(_quantized_ops(quantized))}
    return {"format": "nerdistill-onnx", "exported": exported, "model_file": MODEL_FILE, "inputs": list(INPUTS),
            "outputs": ["emissions"], "max_length": window[0], "stride": window[1],
            "max_positions": window_length(encoder_config.max_position_embeddings, tokenizer),
            "parameters": parameter_count(model), "vocab_size": len(tokenizer), "source": source,
            "quantization": "none" if quantized is None else "dynamic-int8", **int8}


@contextlib.contextmanager
def _staged(*out_dirs: Path) -> Iterator[tuple[Path, ...]]:
    """One empty staging folder per output, beside it (`io.atomic_dir`'s, swept by the next export if a
    killed one left it), all renamed over their outputs once the block has written every one (Ctrl-C and
    SIGTERM wait for the renames): never an fp32 folder of one export beside the int8 one of another."""
    with contextlib.ExitStack() as stack:
        staged = tuple(stack.enter_context(atomic_dir(out_dir)) for out_dir in out_dirs)
        yield staged
        with _signals_deferred():
            stack.close()


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM received in the block take effect when it ends (in the main thread: only there
    can Python set handlers)."""
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum)) for sig in held}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        for signum in caught:
            signal.raise_signal(signum)


def _example_batch(tokenizer: Any, max_length: int, stride: int) -> dict[str, torch.Tensor]:
    words = WordTokenizer(tokenizer, max_length, stride)
    windows = [words.windows([w.text for w in split_words(text)])[0] for text in EXAMPLE_TEXTS]
    batch = NerCollator(tokenizer.pad_token_id)([w.model_input() for w in windows])
    return {name: batch[name] for name in INPUTS}


def _export_graph(graph: nn.Module, encoder: PreTrainedModel, example: dict[str, torch.Tensor],
                  path: Path) -> None:
    """Trace `graph` (whose transformer is `encoder`) on `example` and write it to `path`, every axis dynamic."""
    batch, tokens, words = torch.export.Dim("batch"), torch.export.Dim("tokens"), torch.export.Dim("words")
    with (warnings.catch_warnings(), _quiet_loggers("onnx_ir", "onnxscript", "torch.onnx", level=logging.ERROR),
          _eager_attention(encoder)):
        # Noise about the exporter itself, not this model: shared axes (input_ids and attention_mask
        # keep one name of two) and a deprecated call inside torch.export.
        warnings.filterwarnings("ignore", message=r".*The axis name: .* will not be used", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
        torch.onnx.export(
            graph, tuple(example[name] for name in INPUTS), str(path), input_names=list(INPUTS),
            output_names=["emissions"], dynamo=True, external_data=False, verbose=False,
            dynamic_shapes={"input_ids": {0: batch, 1: tokens}, "attention_mask": {0: batch, 1: tokens},
                            "word_index": {0: batch, 1: words}})
    _strip_origins(path)


@contextlib.contextmanager
def _eager_attention(encoder: PreTrainedModel) -> Iterator[None]:
    """Export eager attention, not SDPA: the exporter writes SDPA as matmuls plus an IsNaN/Where guard
    on every attention map, a quarter of the int8 graph's time on the real stand-in student; the eager
    graph computes the same emissions and ran 29 % faster in int8 (2 threads, 350 sub-tokens)."""
    previous = encoder.config._attn_implementation
    encoder.set_attn_implementation("eager")
    try:
        yield
    finally:
        encoder.set_attn_implementation(previous)


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
    # activation shapes. Per-channel int8 weights keep more entities identical to PyTorch than
    # per-tensor ones (embedding tables get one scale each either way). Activations are quantised on
    # the fly, so no calibration data is needed. The quantiser logs a line per tensor on the root logger.
    with _quiet_loggers(""), _scratch_beside(int8_path) as work:
        prepared = work / "prepared.onnx"
        quant_pre_process(fp32_path, prepared, skip_symbolic_shape=True)
        quantize_dynamic(prepared, int8_path, weight_type=QuantType.QInt8, per_channel=settings.per_channel,
                         op_types_to_quantize=list(_quantized_ops(settings)))


@contextlib.contextmanager
def _scratch_beside(path: Path) -> Iterator[Path]:
    """A scratch folder beside `path`, `tempfile`'s default while the block runs: onnxruntime writes scratch
    models through `tempfile`, which a killed export would leave in /tmp (in a staging folder, they are swept)."""
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".work", dir=path.parent))
    previous, tempfile.tempdir = tempfile.tempdir, str(work)
    try:
        yield work
    finally:
        tempfile.tempdir = previous
        shutil.rmtree(work, ignore_errors=True)


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


def _max_difference(graph: nn.Module, model_path: Path, example: dict[str, torch.Tensor]) -> float:
    session = inference_session(model_path)  # the graph the tagger runs, so that the difference is the shipped one
    (emissions,) = session.run(["emissions"], {name: example[name].numpy() for name in INPUTS})  # (B, W, L)
    with torch.inference_mode():
        expected = graph(*(example[name] for name in INPUTS)).numpy()  # (B, W, L)
    return float(np.abs(emissions - expected).max())
