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
    assert _script().main(["--shape", "tiny", "--point", "sweeps/real.yaml:L3-f70-corpus", "--rows-kept-share", "0.6",
                           "--repeats", "1", "--warmup", "0", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    student = result["student"]
    # params.yaml as shipped: 10 of 12 layers, a quarter of 4 heads = 1 removed per layer, half the FFN.
    assert student["head_counts"] == [3] * 10
    assert student["ffn_sizes"] == [32] * 10
    assert student["vocab_rows"] == {"before": 2000, "after": 2000}  # student.vocab: full
    for name in ("teacher_fp32", "teacher_int8", "student_fp32", "student_int8_onnx"):
        assert result["variants"][name]["doc_p50_ms"] > 0
        assert result["variants"][name]["disk_bytes"] > 0
    assert result["variants"]["student_int8_onnx"]["disk_bytes"] < result["variants"]["student_fp32"]["disk_bytes"]
    assert set(result["targets"]) == {"latency_ratio", "bytes_ratio", "latency_met", "bytes_met"}

    # The sweep point, with its teacher layers derived for 12 layers and its vocabulary trimmed to the share.
    point = result["points"]["L3-f70-corpus"]
    assert point["student"]["teacher_layers"] == [1, 6, 12]
    assert point["student"]["head_counts"] == [3] * 3
    assert sum(point["student"]["ffn_sizes"]) == 58  # 70 % of 3 x 64 neurons removed (134 of 192)
    assert point["student"]["vocab_rows"] == {"before": 2000, "after": 1200}
    assert point["int8_onnx"]["doc_p50_ms"] > 0
    assert 0 < point["int8_onnx"]["disk_bytes"] < result["variants"]["student_int8_onnx"]["disk_bytes"]
    assert point["targets"]["latency_ratio"] == 0.10 and point["targets"]["disk_bytes"] == 25_000_000


def test_a_point_the_grid_does_not_have_is_refused_with_its_points(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="has no point 'L9-f70-corpus'; its points: L3-f70-full"):
        _script().main(["--shape", "tiny", "--point", "sweeps/real.yaml:L9-f70-corpus",
                        "--out", str(tmp_path / "out.json")])
