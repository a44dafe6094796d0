"""An ONNX export (written by `nerdistill.export`) as a tagger backend: the same emissions as the
student from onnxruntime, the same Viterbi with the transitions saved at export time, the same score.
A teacher's export (its manifest's `exported: teacher`) is read as `tagger.teacher`'s backend reads the
teacher: argmax of its logits at each word's first sub-token, in its own labels (`NerTagger` makes IOB2)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from nerdistill.crf import CrfWeights
from nerdistill.io import InputError, read_json
from nerdistill.model_folders import CRF_FILE, EXPORTED_TEACHER, ONNX_MANIFEST, check_vocabulary, load_tokenizer
from nerdistill.onnx_session import inference_session
from nerdistill.tagger.core import WindowLimits, WindowOutput, argmax_outputs, with_scores


class OnnxBackend:
    """The exported encoder + emissions under onnxruntime; Viterbi with the exported CRF weights, or
    argmax for an exported teacher (which has none)."""

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
        self.session = _session(folder / manifest["model_file"], options, providers)
        self.input_names = [node.name for node in self.session.get_inputs()]
        # The exported model's PyTorch count (the graph's initialisers also hold quantisation scales).
        self.parameters: int | None = manifest.get("parameters")
        self.crf: CrfWeights | None = None
        if manifest.get("exported") == EXPORTED_TEACHER:
            self.labels = list(manifest["labels"])
        else:
            crf = read_json(folder / CRF_FILE)
            self.labels = list(crf["labels"])
            self.crf = CrfWeights(*(torch.tensor(crf[key], dtype=torch.float32)
                                    for key in ("start", "end", "transitions")))

    def predict(self, batch: dict[str, torch.Tensor]) -> list[WindowOutput]:
        feeds = {name: batch[name].numpy() for name in self.input_names}
        scores = self.session.run(["emissions"], feeds)[0]  # (B, W, L)
        emissions, probs = torch.from_numpy(scores).float(), torch.from_numpy(_softmax(scores))  # (B, W, L)
        if self.crf is not None:
            return with_scores(probs, self.crf.decode(emissions, batch), self.labels)
        return argmax_outputs(probs, batch["word_mask"], self.labels)


def _session(path: Path, options: Any, providers: list[str]) -> Any:
    """An onnxruntime session of `path`, refused in one line when the file is cut short or not a model."""
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument, InvalidGraph, InvalidProtobuf

    try:
        return inference_session(path, options, providers)
    except (InvalidProtobuf, InvalidArgument, InvalidGraph) as err:
        raise InputError(f"{path.parent}: {path.name} is truncated or not an ONNX model ({str(err).strip()}); "
                         "re-run the export that wrote it") from err


def _softmax(scores: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in numpy: torch's opens an OpenMP region, which cost 4-8 ms a call under
    libgomp's default spinning on busy cores (2 threads, load average 2.5); this one takes 0.02 ms. It took the
    time after the session from 6.6 to 1.6 ms p50 on a 3-layer int8 student's document (bench sets PASSIVE)."""
    exp = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def open_onnx(folder: Path, device: torch.device, threads: int | None
              ) -> tuple[OnnxBackend, PreTrainedTokenizerBase, WindowLimits]:
    """The backend, tokenizer and window limits of an export folder: by default the window of the model
    exported (the student's, or the teacher's from params), as the export's manifest records it.
    `threads` sets onnxruntime's intra-op threads."""
    manifest = read_json(folder / ONNX_MANIFEST)
    tokenizer = load_tokenizer(folder)
    check_vocabulary(folder, tokenizer, manifest["vocab_size"])  # the exported embedding table's rows
    backend = OnnxBackend(folder, manifest, device, threads)
    limits = WindowLimits(manifest["max_positions"], manifest["max_length"], manifest["stride"])
    return backend, tokenizer, limits
