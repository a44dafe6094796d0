"""Gate decisions on every boundary: latency 199/200/300/301 ms, gold and agreement drops, the F1 floor, memory."""
from __future__ import annotations

import pytest

from nerdistill.params_reader import params_from_dict
from nerdistill.results import gate_summary
from nerdistill.stages import gate

PARAMS = params_from_dict({"gate": {"max_f1_drop": 1.0, "max_agreement_drop": 3.0, "min_f1": 0.5,
                                    "go_latency_ms": 200, "nogo_latency_ms": 300, "max_memory_mb": 4096}})


def _eval(drop_agreement: float = 1.0, drop_gold: float | None = None, gold_f1: float = 0.87) -> dict:
    metrics = {"agreement": {"teacher": {"f1": 1.0}, "final": {"f1": 1 - drop_agreement / 100}},
               "f1_drop_points": {"agreement": {"final": drop_agreement}}}
    if drop_gold is not None:
        metrics["gold"] = {"teacher": {"f1": gold_f1 + drop_gold / 100}, "final": {"f1": gold_f1}}
        metrics["f1_drop_points"]["gold"] = {"final": drop_gold}
    return metrics


def _bench(latency: float = 100.0, memory: float = 1000.0, int8: dict | None = None) -> dict:
    variants = {"cpu_fp32": {"doc_p50_ms": latency, "peak_rss_mb": memory}}
    if int8 is not None:
        variants["cpu_int8"] = int8
    return {"final": "final", "doc_tokens": 350, "threads": 2, "models": {"final": {"variants": variants}}}


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
    # A near-untrained teacher and a student at F1 0.00: a drop of 0 points, and still NO-GO.
    metrics = _eval(drop_agreement=0.0, drop_gold=0.0, gold_f1=0.0) if basis == "gold" else _eval(drop_agreement=0.0)
    if basis == "agreement":
        metrics["agreement"]["final"]["f1"] = 0.0
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


def test_faster_int8_wins_only_when_its_quality_passes() -> None:
    good_int8 = {"doc_p50_ms": 150.0, "peak_rss_mb": 1200.0, "f1_drop_points": 2.0, "f1_agreement": 0.98}
    result = gate.run(PARAMS, _eval(), _bench(latency=250.0, int8=good_int8))
    assert (result["decision"], result["variant"]) == ("GO", "cpu_int8")
    assert result["variants"] == {"cpu_fp32": "REVIEW", "cpu_int8": "GO"}

    bad_int8 = {**good_int8, "f1_drop_points": 60.0, "f1_agreement": 0.4}
    result = gate.run(PARAMS, _eval(), _bench(latency=250.0, int8=bad_int8))
    assert (result["decision"], result["variant"]) == ("REVIEW", "cpu_fp32")


def test_int8_is_not_a_candidate_on_the_gold_basis() -> None:
    int8 = {"doc_p50_ms": 150.0, "peak_rss_mb": 1200.0, "f1_drop_points": 0.0, "f1_agreement": 1.0}
    result = gate.run(PARAMS, _eval(drop_gold=1.0), _bench(latency=250.0, int8=int8))
    assert (result["variant"], result["decision"]) == ("cpu_fp32", "REVIEW")


def test_missing_figure_names_the_key() -> None:
    bench = _bench()
    del bench["models"]["final"]["variants"]["cpu_fp32"]["peak_rss_mb"]
    with pytest.raises(ValueError, match="peak_rss_mb"):
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
    assert text.splitlines()[0].startswith("REVIEW")
    assert "FAIL (REVIEW)  cpu_latency_p50_ms = 250.00" in text
