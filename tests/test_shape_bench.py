"""scripts/shape_bench.py on a tiny 12-layer shape: it runs the project's build, prune, trim and export
and reports every variant, so the committed CamemBERT-base figures can be regenerated."""
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("shape_bench", REPO / "scripts" / "shape_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_tiny_shape_reports_every_variant_with_the_params_compression(tmp_path: Path) -> None:
    out = tmp_path / "shape_bench.json"
    assert _script().main(["--shape", "tiny", "--rows-kept-share", "0.6", "--repeats", "1", "--warmup", "0",
                           "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    student = result["student"]
    # params.yaml as shipped: 10 of 12 layers, a quarter of 4 heads = 1 removed per layer, half the FFN.
    assert student["head_counts"] == [3] * 10
    assert student["ffn_sizes"] == [32] * 10
    assert student["vocab_rows"] == {"before": 2000, "after": 1200}
    for name in ("teacher_fp32", "teacher_int8", "student_fp32", "student_int8_onnx"):
        assert result["variants"][name]["doc_p50_ms"] > 0
        assert result["variants"][name]["disk_bytes"] > 0
    assert result["variants"]["student_int8_onnx"]["disk_bytes"] < result["variants"]["student_fp32"]["disk_bytes"]
    assert set(result["targets"]) == {"latency_ratio", "bytes_ratio", "latency_met", "bytes_met"}
