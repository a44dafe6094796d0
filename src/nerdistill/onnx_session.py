"""The one way this project opens an onnxruntime session, so that the export's own check and every
tagger run the same graph."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

# onnxruntime's graph fusions left out of every session. SkipLayerNormFusion makes each residual Add +
# LayerNormalization one SkipLayerNormalization, whose CPU kernel ran 8x slower than the two ops it replaces
# (1.35 vs 0.17 ms on 352 x 768, onnxruntime 1.32, AMD EPYC): without it, a CamemBERT-base-shaped 3-layer int8
# student (9 heads, FFN 922) took a 350-sub-token document in 36.4 ms p50 instead of 45.3 (2 threads, interleaved,
# load average 2.5, OMP_WAIT_POLICY=PASSIVE as in bench), with fp32 emissions within 2e-6 of the fused graph's.
SLOW_FUSIONS = ("SkipLayerNormFusion",)


def inference_session(path: Path, options: Any = None, providers: Sequence[str] = ("CPUExecutionProvider",)) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), options, providers=list(providers), disabled_optimizers=list(SLOW_FUSIONS))
