"""Gate decisions on every boundary (latency 199/200/300/301 ms, gold and agreement drops, the gold drop
per entity type, the F1 floor, memory, the ratio to the teacher's int8 export), noisy latency and the
export's fidelity, on the one variant gate.variant names, and gate.json's flat summary."""
from __future__ import annotations

import pytest

from nerdistill.params import ParamsError
from nerdistill.params_reader import params_from_dict
from nerdistill.results import GATE_KEYS, gate_summary
from nerdistill.stages import gate

PARAMS = params_from_dict({"gate": {"max_f1_drop": 1.0, "max_class_f1_drop": 2.0, "max_agreement_drop": 3.0,
                                    "min_f1": 0.5, "go_latency_ms": 200, "nogo_latency_ms": 300,
                                    "max_memory_mb": 4096}})
JUDGED = "onnx_int8"  # gate.variant's default
TYPES = ("LOC", "ORG", "PER")


def _eval(drop_agreement: float = 1.0, drop_gold: float | None = None, gold_f1: float = 0.87,
          type_drops: dict[str, float] | None = None) -> dict:
    """Scores of the judged export; the final student's are poor, so reading the wrong model shows. On gold
    each entity type loses the overall drop, unless `type_drops` ({type: points}) says otherwise."""
    metrics = {"teacher": "teacher",
               "agreement": {"teacher": {"f1": 1.0}, JUDGED: {"f1": 1 - drop_agreement / 100}, "final": {"f1": 0.2}},
               "f1_drop_points": {"agreement": {JUDGED: drop_agreement, "final": 80.0}}}
    if drop_gold is not None:
        teacher_f1 = gold_f1 + drop_gold / 100
        drops = {name: drop_gold for name in TYPES} | (type_drops or {})
        metrics["gold"] = {"teacher": _scores(teacher_f1, dict.fromkeys(TYPES, teacher_f1)),
                           JUDGED: _scores(gold_f1, {name: teacher_f1 - drop / 100 for name, drop in drops.items()}),
                           "final": _scores(0.1, dict.fromkeys(TYPES, 0.1))}
        metrics["f1_drop_points"]["gold"] = {JUDGED: drop_gold, "final": 70.0}
    return metrics


def _scores(f1: float, per_type: dict[str, float]) -> dict:
    return {"f1": f1, "per_type": {name: {"f1": value} for name, value in per_type.items()}}


def _bench(latency: float = 100.0, memory: float = 1000.0, teacher_disk: float | None = 100e6,
           unstable: tuple[str, ...] = ()) -> dict:
    return {"teacher": "teacher", "final": "final", "doc_tokens": 350, "threads": 2, "max_spread": 2.0,
            "retries": 2 if unstable else 0, "unstable": list(unstable), "models": {
        "teacher": {"kind": "teacher", "disk_bytes": teacher_disk,
                    "variants": {"cpu_fp32": {"doc_p50_ms": 400.0, "peak_rss_mb": 2000.0}}},
        "final": {"kind": "student", "disk_bytes": 50e6, "variants": {
            "cpu_fp32": {"doc_p50_ms": 250.0, "peak_rss_mb": 1500.0},
            "cpu_int8": {"doc_p50_ms": 150.0, "peak_rss_mb": 1200.0, "f1_agreement": 0.98, "f1_drop_points": 2.0},
            "cuda_fp32": {"doc_p50_ms": 5.0}}},
        JUDGED: {"kind": "onnx", "disk_bytes": 25e6,
                 "variants": {"cpu_onnx": {"doc_p50_ms": latency, "peak_rss_mb": memory, "p95_over_p50": 1.1}}},
        "teacher_int8": {"kind": "onnx", "disk_bytes": 40e6,
                         "variants": {"cpu_onnx": {"doc_p50_ms": 350.0, "doc_p95_ms": 385.0}}}}}


@pytest.mark.parametrize(("latency", "decision"), [(199, "GO"), (199.99, "GO"), (200, "REVIEW"),
                                                   (300, "REVIEW"), (300.01, "NO-GO"), (301, "NO-GO")])
def test_latency_boundaries(latency: float, decision: str) -> None:
    result = gate.run(PARAMS, _eval(), _bench(latency=latency))
    assert result["decision"] == decision
    latency_check = next(c for c in result["checks"] if c["name"] == "cpu_latency_p50_ms")
    assert latency_check["value"] == latency
    assert latency_check["passed"] is (latency < 200)
    assert latency_check["nogo_threshold"] == 300


@pytest.mark.parametrize(("drop", "decision"), [(1.0, "GO"), (0.999, "GO"), (1.001, "NO-GO"), (-0.5, "GO")])
def test_gold_drop_at_the_bound_passes(drop: float, decision: str) -> None:
    assert gate.run(PARAMS, _eval(drop_gold=drop), _bench())["decision"] == decision


@pytest.mark.parametrize(("drop", "decision"), [(3.0, "GO"), (2.999, "GO"), (3.001, "REVIEW"), (40.0, "REVIEW")])
def test_agreement_drop_has_its_own_bound_and_only_asks_for_review(drop: float, decision: str) -> None:
    result = gate.run(PARAMS, _eval(drop_agreement=drop), _bench())
    assert result["decision"] == decision
    quality = result["checks"][0]
    assert (quality["name"], quality["threshold"], quality["on_fail"]) == ("agreement_drop_points", 3.0, "REVIEW")
    assert "evaluate.gold_path" in quality["source"]


def test_gold_threshold_is_never_applied_to_agreement() -> None:
    # 2 points of disagreement: past the gold bound (1.0) but within the agreement bound (3.0).
    result = gate.run(PARAMS, _eval(drop_agreement=2.0), _bench())
    assert result["decision"] == "GO"
    assert all(check["name"] != "f1_drop_points" for check in result["checks"])


@pytest.mark.parametrize("basis", ["gold", "agreement"])
def test_useless_models_are_nogo_whatever_the_drop(basis: str) -> None:
    # A near-untrained teacher and an export at F1 0.00: a drop of 0 points, and still NO-GO.
    metrics = _eval(drop_agreement=0.0, drop_gold=0.0, gold_f1=0.0) if basis == "gold" else _eval(drop_agreement=0.0)
    if basis == "agreement":
        metrics["agreement"][JUDGED]["f1"] = 0.0
    result = gate.run(PARAMS, metrics, _bench())
    assert (result["basis"], result["decision"]) == (basis, "NO-GO")
    floor = next(c for c in result["checks"] if c["name"] == "f1")
    assert (floor["value"], floor["passed"], floor["on_fail"]) == (0.0, False, "NO-GO")


@pytest.mark.parametrize(("memory", "decision"), [(4095.9, "GO"), (4096, "NO-GO"), (5000, "NO-GO")])
def test_memory_boundaries(memory: float, decision: str) -> None:
    result = gate.run(PARAMS, _eval(), _bench(memory=memory))
    assert result["decision"] == decision
    assert next(c for c in result["checks"] if c["name"] == "peak_memory_mb")["passed"] is (decision == "GO")


def test_gold_failure_beats_review_latency() -> None:
    assert gate.run(PARAMS, _eval(drop_gold=5.0), _bench(latency=250))["decision"] == "NO-GO"


def test_gold_basis_is_used_when_evaluate_scored_gold() -> None:
    # Agreement says fine, gold says the student lost too much: gold wins and the verdict says so.
    result = gate.run(PARAMS, _eval(drop_agreement=0.5, drop_gold=4.0), _bench())
    assert result["basis"] == "gold"
    assert result["decision"] == "NO-GO"
    assert result["checks"][0]["value"] == 4.0
    assert "gold" in result["checks"][0]["source"]


def test_agreement_basis_without_gold() -> None:
    result = gate.run(PARAMS, _eval(drop_agreement=0.5), _bench())
    assert (result["basis"], result["decision"]) == ("agreement", "GO")


def test_default_judges_the_int8_export_and_writes_the_flat_summary() -> None:
    result = gate.run(PARAMS, _eval(drop_agreement=1.5), _bench(latency=100.0, memory=900.0))
    assert tuple(result) == GATE_KEYS
    assert {key: result[key] for key in GATE_KEYS[:-2]} == {
        "decision": "GO", "basis": "agreement", "model": "onnx_int8", "variant": "cpu_onnx",
        "f1": pytest.approx(0.985), "f1_drop_points": 1.5, "latency_ratio_vs_teacher_fp32": 0.25,
        "size_ratio_vs_teacher_fp32": 0.25, "class_f1_drop_points": None,
        "latency_ratio_vs_teacher_int8": 100.0 / 350.0, "size_ratio_vs_teacher_int8": 25e6 / 40e6, "doc_p50_ms": 100.0,
        "disk_bytes": 25e6, "peak_rss_mb": 900.0}
    assert result["p95_over_p50"] == {"onnx_int8:cpu_onnx": 1.1, "teacher_int8:cpu_onnx": 1.1}
    assert [check["name"] for check in result["checks"]] == [
        "agreement_drop_points", "f1", "latency_stable", "cpu_latency_p50_ms", "latency_ratio_vs_teacher_int8",
        "peak_memory_mb"]
    assert all("onnx_int8 (cpu_onnx)" in check["source"] for check in result["checks"]
               if check["name"] != "latency_stable")


def test_a_pytorch_model_is_judged_on_cpu_fp32_by_default() -> None:
    params = params_from_dict({"gate": {"variant": "final", "min_f1": 0.0, "max_agreement_drop": 100.0}})
    result = gate.run(params, _eval(drop_gold=0.5), _bench())
    assert (result["model"], result["variant"], result["basis"]) == ("final", "cpu_fp32", "gold")
    assert (result["f1"], result["f1_drop_points"], result["doc_p50_ms"]) == (0.1, 70.0, 250.0)
    assert (result["disk_bytes"], result["size_ratio_vs_teacher_fp32"]) == (50e6, 0.5)
    assert result["decision"] == "NO-GO"  # 70 gold points lost


def test_torch_int8_is_judged_on_benchs_agreement_even_with_gold() -> None:
    params = params_from_dict({"gate": {"variant": "final:cpu_int8"}})
    result = gate.run(params, _eval(drop_gold=0.5), _bench())
    assert (result["variant"], result["basis"], result["f1"], result["f1_drop_points"]) == \
        ("cpu_int8", "agreement", 0.98, 2.0)
    # Quantised in memory, never saved: no bytes on disk to report.
    assert result["disk_bytes"] is None and result["size_ratio_vs_teacher_fp32"] is None
    assert result["latency_ratio_vs_teacher_fp32"] == 150.0 / 400.0
    assert result["decision"] == "GO"


def test_unknown_teacher_size_leaves_the_size_ratio_null() -> None:
    result = gate.run(PARAMS, _eval(), _bench(teacher_disk=None))
    assert result["disk_bytes"] == 25e6 and result["size_ratio_vs_teacher_fp32"] is None
    assert "teacher's fp32: 0.250, unknown;" in gate_summary(result)


@pytest.mark.parametrize(("variant", "message"), [
    ("onnx_fp32", "bench measured no model 'onnx_fp32'"),
    ("final:cpu_onnx", "bench measured no CPU variant 'cpu_onnx' of 'final'"),
    ("final:cuda_fp32", "bench measured no CPU variant 'cuda_fp32' of 'final'"),
])
def test_a_variant_bench_did_not_measure_is_an_error_listing_what_it_did(variant: str, message: str) -> None:
    with pytest.raises(ParamsError, match=f"gate.variant = '{variant}': {message}") as error:
        gate.run(params_from_dict({"gate": {"variant": variant}}), _eval(), _bench())
    assert "teacher:cpu_fp32, final:cpu_fp32, final:cpu_int8, onnx_int8:cpu_onnx, teacher_int8:cpu_onnx:" in \
        str(error.value)


def test_a_model_evaluate_did_not_score_is_an_error() -> None:
    metrics = _eval()
    del metrics["agreement"][JUDGED]
    with pytest.raises(ParamsError, match="gate.variant = 'onnx_int8': evaluate scored no model 'onnx_int8'; "
                                          "it scored final, teacher"):
        gate.run(PARAMS, metrics, _bench())


def test_missing_figure_names_the_key() -> None:
    bench = _bench()
    del bench["models"][JUDGED]["variants"]["cpu_onnx"]["peak_rss_mb"]
    with pytest.raises(ValueError, match="models.onnx_int8.variants.cpu_onnx.peak_rss_mb"):
        gate.run(PARAMS, _eval(), bench)


def test_non_finite_figure_is_rejected() -> None:
    with pytest.raises(ValueError, match="doc_p50_ms"):
        gate.run(PARAMS, _eval(), _bench(latency=float("nan")))


@pytest.mark.parametrize(("decision", "fail_on_nogo", "code"),
                         [("NO-GO", True, 1), ("NO-GO", False, 0), ("REVIEW", True, 0), ("GO", True, 0)])
def test_exit_code(decision: str, fail_on_nogo: bool, code: int) -> None:
    params = params_from_dict({"gate": {"fail_on_nogo": fail_on_nogo}})
    assert gate.exit_code({"decision": decision}, params) == code


def test_summary_names_decision_and_checks() -> None:
    text = gate_summary(gate.run(PARAMS, _eval(), _bench(latency=250)))
    assert text.splitlines()[0] == "REVIEW  (onnx_int8 cpu_onnx, F1 basis: agreement)"
    assert "FAIL (REVIEW)  cpu_latency_p50_ms = 250.00" in text
    assert text.splitlines()[-1] == ("  size on disk 25.00 MB; latency, size over the teacher's fp32: 0.625, 0.250; "
                                     "over its own int8 export: 0.714, 0.625")


def test_noisy_latency_is_review_and_not_judged() -> None:
    """A busy machine: the judged export's spread stayed past bench.max_spread. Its 350 ms p50 would be
    NO-GO on a steady bench; here the gate asks for a quiet re-run instead."""
    bench = _bench(latency=350.0, unstable=("onnx_int8:cpu_onnx",))
    bench["models"][JUDGED]["variants"]["cpu_onnx"]["p95_over_p50"] = 6.5
    result = gate.run(PARAMS, _eval(), bench)
    stable = next(c for c in result["checks"] if c["name"] == "latency_stable")
    assert (result["decision"], stable["passed"], stable["value"], stable["threshold"]) == ("REVIEW", False, 6.5, 2.0)
    assert "onnx_int8:cpu_onnx 6.50" in stable["source"] and "quiet machine" in stable["source"]
    assert gate.run(PARAMS, _eval(), _bench(latency=350.0))["decision"] == "NO-GO"


def test_a_noisy_teacher_reference_is_review_too() -> None:
    result = gate.run(PARAMS, _eval(), _bench(unstable=("teacher:cpu_fp32",)))
    assert result["decision"] == "REVIEW"
    assert "teacher:cpu_fp32" in next(c for c in result["checks"] if c["name"] == "latency_stable")["source"]


@pytest.mark.parametrize(("teacher_int8_ms", "decision"), [(200.0, "GO"), (166.0, "REVIEW")])
def test_the_student_must_beat_the_teachers_own_int8_export(teacher_int8_ms: float, decision: str) -> None:
    bench = _bench(latency=100.0)
    bench["models"]["teacher_int8"]["variants"]["cpu_onnx"]["doc_p50_ms"] = teacher_int8_ms
    result = gate.run(PARAMS, _eval(), bench)
    assert result["decision"] == decision
    assert result["latency_ratio_vs_teacher_int8"] == pytest.approx(100.0 / teacher_int8_ms)


def test_without_the_teachers_int8_export_the_gate_says_how_to_get_it() -> None:
    bench = _bench()
    del bench["models"]["teacher_int8"]
    result = gate.run(PARAMS, _eval(), bench)
    ratio = next(c for c in result["checks"] if c["name"] == "latency_ratio_vs_teacher_int8")
    assert (result["decision"], ratio["value"], ratio["passed"]) == ("REVIEW", None, False)
    assert "nerdistill export-teacher" in ratio["source"]
    assert "over its own int8 export: unknown, unknown" in gate_summary(result)


@pytest.mark.parametrize(("fidelity", "decision"), [(0.99, "GO"), (0.95, "REVIEW")])
def test_without_gold_the_exports_fidelity_is_judged(fidelity: float, decision: str) -> None:
    export = {"int8": {"f1_vs_pytorch": fidelity}, "heldout_segmentation": {"words_resegmented_share": 0.06}}
    result = gate.run(PARAMS, _eval(), _bench(), export)
    check = next(c for c in result["checks"] if c["name"] == "export_fidelity")
    assert (result["decision"], check["value"], check["on_fail"]) == (decision, fidelity, "REVIEW")
    # With gold, the export's own gold F1 is the measure; fidelity is not judged twice.
    gold = gate.run(PARAMS, _eval(drop_gold=0.5), _bench(), export)
    assert gold["decision"] == "GO" and all(c["name"] != "export_fidelity" for c in gold["checks"])


def test_gate_json_keeps_only_the_spreads_its_stability_check_watched() -> None:
    bench = _bench()
    bench["models"]["final"]["variants"]["cpu_fp32"]["p95_over_p50"] = 1.3  # measured, not judged
    bench["models"]["teacher"]["variants"]["cpu_fp32"]["p95_over_p50"] = 1.2
    result = gate.run(PARAMS, _eval(), bench)
    assert result["p95_over_p50"] == {"onnx_int8:cpu_onnx": 1.1, "teacher:cpu_fp32": 1.2, "teacher_int8:cpu_onnx": 1.1}
    assert list(result)[:3] == ["decision", "basis", "variant"]


def test_one_entity_type_losing_more_than_the_bound_asks_for_review_and_names_it() -> None:
    """0.8 points overall, within gate.max_f1_drop; ORG 2.5 points below the teacher's."""
    result = gate.run(PARAMS, _eval(drop_gold=0.8, type_drops={"LOC": 0.4, "ORG": 2.5, "PER": 0.3}), _bench())
    assert result["decision"] == "REVIEW"
    assert result["class_f1_drop_points"] == pytest.approx({"LOC": 0.4, "ORG": 2.5, "PER": 0.3})
    check = next(c for c in result["checks"] if c["name"] == "class_f1_drop_points")
    assert (check["passed"], check["on_fail"], check["threshold"], check["worst_class"]) == \
        (False, "REVIEW", 2.0, "ORG")
    assert check["value"] == pytest.approx(2.5)
    assert "worst ORG: LOC 0.40, ORG 2.50, PER 0.30" in check["source"]
    assert all(c["passed"] for c in result["checks"] if c is not check)  # this check alone says REVIEW
    assert "FAIL (REVIEW)  class_f1_drop_points = 2.50 (threshold 2)" in gate_summary(result)


@pytest.mark.parametrize(("org_drop", "decision"), [(2.0, "GO"), (1.9, "GO"), (2.01, "REVIEW")])
def test_every_entity_type_within_the_bound_passes(org_drop: float, decision: str) -> None:
    result = gate.run(PARAMS, _eval(drop_gold=0.8, type_drops={"ORG": org_drop}), _bench())
    check = next(c for c in result["checks"] if c["name"] == "class_f1_drop_points")
    assert (result["decision"], check["passed"], check["worst_class"]) == (decision, decision == "GO", "ORG")


def test_an_entity_type_the_model_never_scored_lost_all_its_f1() -> None:
    metrics = _eval(drop_gold=0.5)
    del metrics["gold"][JUDGED]["per_type"]["PER"]
    result = gate.run(PARAMS, metrics, _bench())
    assert result["class_f1_drop_points"]["PER"] == pytest.approx(87.5)
    assert result["decision"] == "REVIEW"


@pytest.mark.parametrize("variant", ["onnx_int8", "final:cpu_int8"])
def test_without_a_gold_score_there_is_no_per_type_check(variant: str) -> None:
    # No gold set at all, or a gold set evaluate could not score the in-memory int8 copy on.
    metrics = _eval() if variant == JUDGED else _eval(drop_gold=0.5, type_drops={"ORG": 9.0})
    result = gate.run(params_from_dict({"gate": {"variant": variant}}), metrics, _bench())
    assert (result["basis"], result["class_f1_drop_points"], result["decision"]) == ("agreement", None, "GO")
    assert all(c["name"] != "class_f1_drop_points" for c in result["checks"])


def test_a_nogo_stays_nogo_when_an_entity_type_also_drops() -> None:
    result = gate.run(PARAMS, _eval(drop_gold=1.5, type_drops={"ORG": 4.0}), _bench())
    failed = {c["name"]: c["on_fail"] for c in result["checks"] if not c["passed"]}
    assert failed == {"f1_drop_points": "NO-GO", "class_f1_drop_points": "REVIEW"}
    assert result["decision"] == "NO-GO"
