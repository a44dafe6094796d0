"""The Pareto front: which points no other beats, what each further F1 point costs, and the points
read from experiments' result files."""
from __future__ import annotations

import pytest

from nerdistill import front
from nerdistill.results import SUMMARY_BYTES, SUMMARY_KEYS, SUMMARY_P50


def _front(points: list[tuple[str, float, float]]) -> list[str]:
    chosen = front.non_dominated(points, lambda p: p[1], lambda p: p[2])
    return [name for name, _, _ in chosen]


def test_the_front_keeps_what_nothing_beats_cheapest_first() -> None:
    points = [("a", 0.80, 10.0), ("b", 0.85, 20.0), ("c", 0.84, 25.0), ("d", 0.90, 40.0), ("e", 0.79, 10.0)]
    # c: b is better and cheaper; e: a has more F1 at the same cost.
    assert _front(points) == ["a", "b", "d"]


def test_equal_points_both_stay_and_a_single_point_is_its_own_front() -> None:
    assert _front([("a", 0.8, 10.0), ("b", 0.8, 10.0)]) == ["a", "b"]
    assert _front([("only", 0.5, 1.0)]) == ["only"]
    assert _front([]) == []


def test_step_costs_price_each_further_half_point() -> None:
    line = [("a", 0.80, 10.0), ("b", 0.85, 20.0), ("d", 0.90, 40.0)]
    steps = front.step_costs(line, lambda p: p[1], lambda p: p[2])
    # a -> b: 10 ms for 5 points, 1 ms per 0.5 point; b -> d: 20 ms for 5 points.
    assert steps[0] is None and steps[1] == pytest.approx(1.0) and steps[2] == pytest.approx(2.0)
    assert front.step_costs([("a", 0.8, 1.0), ("b", 0.8, 1.0)], lambda p: p[1], lambda p: p[2]) == [None, None]


def test_quantities_read_at_a_glance() -> None:
    assert [front.quantity(v, "B") for v in (950_000, 1_234_567, 12, 3.2e9)] == ["950 kB", "1.23 MB", "12 B", "3.2 GB"]
    assert front.quantity(0.000833, "ms") == "0.000833 ms" and front.quantity(22.4, "ms") == "22.4 ms"


def test_labels_are_the_sweeps_names_of_the_params() -> None:
    params = {"student": {"num_layers": 3}, "pruning": {"ratio": 0.5, "scope": "global"}, "distill": {}}
    assert front.label(params) == "L3-h50"
    assert front.label({}) == ""


def _files(layers: int, f1: float, p50: float, size: float, basis: str = "agreement", teacher_p50: float = 10.0,
           flat: bool = True) -> dict:
    gate = {"decision": "GO", "basis": basis, "model": "final", "variant": "cpu_fp32"}
    bench = {"teacher": "teacher", "final": "final", "models": {
        "teacher": {"disk_bytes": 1000, "variants": {"cpu_fp32": {"doc_p50_ms": teacher_p50},
                                                    "cpu_int8": {"doc_p50_ms": teacher_p50 / 2}}},
        "final": {"disk_bytes": size, "variants": {"cpu_fp32": {"doc_p50_ms": p50, "peak_rss_mb": 50}}}}}
    scores = {"teacher": {"f1": 1.0 if basis == "agreement" else 0.9}, "final": {"f1": f1}}
    eval_metrics = {"teacher": "teacher", "final": "final", basis: scores,
                    "f1_drop_points": {basis: {"final": 100 * (scores["teacher"]["f1"] - f1)}}}
    if flat:
        gate |= dict(zip(SUMMARY_KEYS, (f1, 1.0, p50, size, 50, p50 / teacher_p50, size / 1000)))
    return {"metrics/gate.json": gate, "metrics/bench.json": bench, "metrics/eval.json": eval_metrics,
            "params.yaml": {"student": {"num_layers": layers}, "pruning": {"ratio": 0.25}}}


def test_build_reads_the_shipped_figures_and_the_teacher() -> None:
    built = front.build([("L2", _files(2, 0.80, 2.0, 300)), ("L3", _files(3, 0.85, 3.0, 400, teacher_p50=12.0)),
                         ("L4", _files(4, 0.84, 4.0, 500, flat=False)), ("broken", {})])
    assert built.basis == "agreement"
    assert [p.name for p in built.points] == ["L2", "L3", "L4"]
    assert built.points[0].label == "L2-h25" and built.points[0].costs == {SUMMARY_P50: 2.0, SUMMARY_BYTES: 300}
    # L4's gate.json predates the flat summary: the same figures come from bench and eval.
    assert built.points[2].f1 == 0.84 and built.points[2].costs[SUMMARY_P50] == 4.0
    assert [p.name for p in built.fronts[SUMMARY_P50]] == ["L2", "L3"]
    assert built.left_out == ["broken: no shipped figures (gate metrics lack the key 'model'; re-run the stage "
                              "that writes them (dvc repro evaluate bench))"]
    teacher = {p.name: (p.f1, p.costs[SUMMARY_P50], p.costs[SUMMARY_BYTES]) for p in built.teacher}
    assert teacher == {"teacher cpu_fp32": (1.0, 10.0, 1000), "teacher cpu_int8": (1.0, 5.0, 1000)}


def test_gold_wins_and_agreement_rows_are_left_out_by_name() -> None:
    built = front.build([("a", _files(2, 0.80, 2.0, 300)), ("g", _files(3, 0.70, 3.0, 400, basis="gold"))])
    assert built.basis == "gold" and [p.name for p in built.points] == ["g"]
    assert built.left_out == ["a: judged on agreement, the front on gold"]
    assert built.teacher[0].f1 == 0.9
    assert front.build([("broken", {})]) is None


def _bounded(files: dict, bound: float) -> dict:
    files["params.yaml"]["gate"] = {"max_f1_drop": bound, "max_agreement_drop": 50.0}
    return files


def test_the_recommendation_is_the_cheapest_point_within_the_gates_drop_bound() -> None:
    # Teacher F1 0.9 (gold); L2 is 2.5 points below it, L3 0.5, L4 0.5 above.
    rows = [(name, _bounded(_files(layers, f1, p50, 100 * layers, basis="gold"), 1.0))
            for name, layers, f1, p50 in (("L2", 2, 0.875, 2.0), ("L3", 3, 0.895, 3.0), ("L4", 4, 0.905, 4.0))]
    built = front.build(rows)
    assert built.max_drop_points == 1.0
    assert front.recommend(built).name == "L3"
    # The strictest bound applies (gold: gate.max_f1_drop); with none in reach there is no recommendation.
    rows[2] = ("L4", _bounded(_files(4, 0.905, 4.0, 400, basis="gold"), 0.25))
    assert front.recommend(front.build(rows)).name == "L4"
    rows = [(name, _bounded(files, 0.1)) for name, files in rows]
    assert front.recommend(front.build(rows[:2])) is None
    # Without the gate's params the bound is unknown: nothing is recommended.
    assert front.recommend(front.build([("L3", _files(3, 0.895, 3.0, 300, basis="gold"))])) is None


def test_the_recommendation_skips_a_point_with_an_entity_type_past_the_per_type_bound() -> None:
    # Teacher F1 0.9 (gold); L2 is 0.5 points below it overall but 2.5 below on ORG, L3 0.3 below everywhere.
    rows = []
    for name, layers, f1, p50, org in (("L2", 2, 0.895, 2.0, 2.5), ("L3", 3, 0.897, 3.0, 0.3)):
        files = _bounded(_files(layers, f1, p50, 100 * layers, basis="gold"), 1.0)
        files["metrics/gate.json"]["class_f1_drop_points"] = {"LOC": 0.3, "ORG": org, "PER": 0.2}
        rows.append((name, files))
    assert front.recommend(front.build(rows)).name == "L2"  # results older than the bound: not applied
    for _, files in rows:
        files["params.yaml"]["gate"]["max_class_f1_drop"] = 2.0
    built = front.build(rows)
    assert built.max_class_drop_points == 2.0 and built.points[0].class_drops["ORG"] == 2.5
    assert front.recommend(built).name == "L3"
    # A point without per-type figures (agreement, or a gate.json older than them) is judged on F1 alone.
    del rows[0][1]["metrics/gate.json"]["class_f1_drop_points"]
    assert front.recommend(front.build(rows)).name == "L2"


def test_a_latency_tie_goes_to_the_smaller_file() -> None:
    # Both 0.4 point below the teacher; the trimmed vocabulary is 3 % slower here (noise) and 40 % smaller.
    rows = [(name, _bounded(_files(3, 0.896, p50, size, basis="gold"), 1.0))
            for name, p50, size in (("L3-full", 3.0, 500), ("L3-corpus", 3.1, 300), ("L2", 3.5, 200))]
    assert front.recommend(front.build(rows)).name == "L3-corpus"
    # Past the tie, latency decides whatever the bytes.
    rows[1] = ("L3-corpus", _bounded(_files(3, 0.896, 3.4, 300, basis="gold"), 1.0))
    assert front.recommend(front.build(rows)).name == "L3-full"


def test_unfinished_experiments_are_named_among_those_left_out() -> None:
    built = front.build([("L2", _files(2, 0.80, 2.0, 300))], unfinished=["curly-coof: running, no results yet"])
    assert [p.name for p in built.points] == ["L2"] and built.left_out == ["curly-coof: running, no results yet"]


def test_the_f1_bound_is_the_teachers_f1_less_the_strictest_drop() -> None:
    rows = [("L3", _bounded(_files(3, 0.895, 3.0, 300, basis="gold"), 1.0))]
    value, caption = front.f1_bound(front.build(rows))
    assert value == pytest.approx(0.9 - 0.01) and "1 points" in caption
    assert front.f1_bound(front.build([("L3", _files(3, 0.895, 3.0, 300))])) is None  # no gate params


def test_the_front_png_labels_every_point_marks_the_pick_and_the_bound_on_log_axes(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import struct

    from nerdistill import plots

    rows = [(name, _bounded(_files(layers, f1, p50, 100 * layers, basis="gold"), 1.0))
            for name, layers, f1, p50 in (("L2", 2, 0.875, 2.0), ("L3", 3, 0.895, 3.0), ("L4", 4, 0.905, 4.0),
                                          ("L5", 5, 0.880, 5.0))]
    built = front.build(rows)
    figures = []
    save = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: (figures.append(fig), save(fig, path)))
    path = tmp_path / "front.png"
    plots.plot_front(built.points, built.fronts, built.teacher, built.basis, front.COSTS, path,
                     recommended=front.recommend(built), f1_bound=front.f1_bound(built))
    width = struct.unpack(">I", path.read_bytes()[16:20])[0]
    assert 1000 <= width <= 1400  # read at 1,400 px without scaling down
    legend = [text.get_text() for text in figures[0].legends[0].get_texts()]
    assert "recommended: L3" in legend and any(entry.startswith("gate bound") for entry in legend)
    for ax in figures[0].axes:
        texts = {text.get_text() for text in ax.texts}
        assert {"L2 (L2-h25)", "L3 (L3-h25)", "L4 (L4-h25)", "L5 (L5-h25)"} <= texts  # L5 is dominated
        assert ax.get_xscale() == "log"
        assert any(line.get_linestyle() == "--" and line.get_ydata()[0] == pytest.approx(0.89) for line in ax.lines)


def test_the_latency_bars_data_goes_beside_the_png(tmp_path) -> None:
    import csv

    from nerdistill.plots import plot_latency

    figures = {"doc_p50_ms": 10.0, "doc_p95_ms": 12.0, "phrase_p50_ms": 2.0, "phrase_p95_ms": 3.0}
    results = {"teacher": {"variants": {"cpu_fp32": figures}}, "final": {"variants": {"cpu_int8": figures}}}
    metrics = {"unstable": ["final:cpu_int8"], "doc_subtokens": 350, "phrase_words": 9, "threads": 2, "repeats": 3,
               "max_spread": 2.0, "retries": 1}
    plot_latency(results, tmp_path / "latency.png", metrics)
    with open(tmp_path / "latency.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["model_variant"], row["workload"]) for row in rows] == [
        ("teacher cpu_fp32", "doc"), ("teacher cpu_fp32", "phrase"), ("final cpu_int8", "doc"),
        ("final cpu_int8", "phrase")]
    assert (rows[0]["p50_ms"], rows[0]["p95_ms"], rows[0]["unstable"], rows[2]["unstable"]) == \
        ("10.0", "12.0", "False", "True")
