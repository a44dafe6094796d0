"""The Pareto front of the compression space: which experiments no other one beats on F1 and a cost
(CPU p50 of the shipped variant, bytes on disk), and what each further F1 point costs along it.

Each experiment is one point, read from its eval/bench/gate results (`results.summary`); the
teacher in fp32 and int8 are reference points. F1 is on the gold basis when any experiment was
judged on gold (agreement with the teacher otherwise); experiments judged on the other basis are
left out and named, since the two F1s do not compare.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar

from nerdistill.results import AGREEMENT, BENCH, CLASS_DROP, EVAL, FP32, GATE, GOLD, INT8, NOGO, PARAMS_FILE, \
    SUMMARY_BYTES, SUMMARY_F1, SUMMARY_LATENCY_RATIO, SUMMARY_LATENCY_RATIO_INT8, SUMMARY_P50, SUMMARY_RSS, \
    SUMMARY_SIZE_RATIO, SUMMARY_SIZE_RATIO_INT8, f1_path, lookup, number, summary, variant_path
from nerdistill.sweep import NAME_PARTS, point_name

# Each cost a panel of the front is drawn against: its figure key -> (axis title, unit).
COSTS = {SUMMARY_P50: ("CPU p50 per document", "ms"), SUMMARY_BYTES: ("size on disk", "B")}
# COSTS key -> its ratios in the point's own bench: over the teacher's fp32, over the teacher's own int8 export
RATIOS = {SUMMARY_P50: SUMMARY_LATENCY_RATIO, SUMMARY_BYTES: SUMMARY_SIZE_RATIO}
RATIOS_INT8 = {SUMMARY_P50: SUMMARY_LATENCY_RATIO_INT8, SUMMARY_BYTES: SUMMARY_SIZE_RATIO_INT8}
STEP_POINTS = 0.5  # "what each further 0.5 F1 point costs"
# Latencies within this share of the cheapest are a tie, won by the smaller file: two benches of one
# export on this 2-core CPU differ by up to 0.02 in a ratio near 0.25 (docs/results.md, Pareto sweep),
# and a trimmed vocabulary changes the bytes, not the compute.
LATENCY_TIE = 0.08
# The gate's param bounding the F1 drop on each basis (`dvc exp show` keeps params, not gate.json's checks).
DROP_BOUNDS = {GOLD: "max_f1_drop", AGREEMENT: "max_agreement_drop"}
CLASS_BOUND = "max_class_f1_drop"  # the gate's param bounding the gold drop per entity type
PARAMS = PARAMS_FILE

T = TypeVar("T")


@dataclass(frozen=True)
class Point:
    name: str                # experiment (row) name
    label: str               # its swept params, short (L3-h25)
    f1: float
    costs: dict[str, float]  # COSTS key -> value
    # COSTS key -> cost over the teacher's fp32 (ratios) and over its int8 export (ratios_int8), both from
    # this experiment's own bench (the teacher points have none): a ratio from one interleaved bench is
    # steadier than one over a teacher timed in another bench, at another time
    ratios: dict[str, float | None] = field(default_factory=dict)
    ratios_int8: dict[str, float | None] = field(default_factory=dict)
    memory_mb: float | None = None
    decision: str | None = None
    class_drops: dict[str, float] = field(default_factory=dict)  # gate.json's; empty without gold


@dataclass(frozen=True)
class Front:
    basis: str
    points: list[Point]               # every experiment judged on `basis`
    teacher: list[Point]              # references: fp32 and int8
    fronts: dict[str, list[Point]]    # per cost: the non-dominated points, cheapest first
    left_out: list[str]               # experiments without figures on `basis`, with why
    max_drop_points: float | None = None  # gate.max_f1_drop (gold) or max_agreement_drop: the strictest
    max_class_drop_points: float | None = None  # gate.max_class_f1_drop: the strictest


def non_dominated(points: Sequence[T], quality: Callable[[T], float], cost: Callable[[T], float]) -> list[T]:
    """The points no other point dominates (F1 at least as high at a cost at most as high, one of
    the two strictly better), cheapest first."""
    def beaten(p: T) -> bool:
        return any(quality(o) >= quality(p) and cost(o) <= cost(p) and (quality(o) > quality(p) or cost(o) < cost(p))
                   for o in points)
    return sorted((p for p in points if not beaten(p)), key=cost)


def step_costs(front: Sequence[T], quality: Callable[[T], float], cost: Callable[[T], float]) -> list[float | None]:
    """Along a front (cheapest first, F1 in [0, 1]), the extra cost per further STEP_POINTS F1 points
    from the previous point to each one; None for the cheapest and for a tie in F1."""
    out: list[float | None] = [None] if front else []
    for previous, current in zip(front, front[1:]):
        gained = 100 * (quality(current) - quality(previous))
        out.append((cost(current) - cost(previous)) * STEP_POINTS / gained if gained > 0 else None)
    return out


def quantity(value: float, unit: str) -> str:
    """3 significant digits; bytes with an SI prefix (950 kB, 1.2 MB)."""
    if unit == "B":
        for prefix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if abs(value) >= scale:
                return f"{value / scale:.3g} {prefix}B"
    return f"{value:.3g} {unit}"


def label(params: dict[str, Any]) -> str:
    """The short name of an experiment's params, as a sweep names its points (L3-h25)."""
    values = {}
    for key in NAME_PARTS:
        node: Any = params
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            values[key] = node
    return point_name(values)


def build(rows: Sequence[tuple[str, dict[str, dict]]], unfinished: Sequence[str] = ()) -> Front | None:
    """The front over (experiment name, {result file: content}) rows of finished experiments; None when no
    row has figures. `unfinished`: why the experiments left out before (running, failed) were, listed
    with the rows left out here."""
    found: dict[str, tuple[str, dict[str, float], dict]] = {}
    left_out = list(unfinished)
    for name, files in rows:
        try:
            figures = summary(files.get(GATE, {}), files.get(BENCH, {}), files.get(EVAL, {}))
            found[name] = (files[GATE]["basis"], figures, files)
        except (KeyError, ValueError) as err:
            left_out.append(f"{name}: no shipped figures ({err})")
    if not found:
        return None
    basis = GOLD if any(b == GOLD for b, _, _ in found.values()) else AGREEMENT
    points, bounds, class_bounds = [], [], []
    for name, (row_basis, figures, files) in found.items():
        if row_basis != basis:
            left_out.append(f"{name}: judged on {row_basis}, the front on {basis}")
            continue
        points.append(Point(name=name, label=label(files.get(PARAMS, {})), f1=figures[SUMMARY_F1],
                            costs={key: figures[key] for key in COSTS},
                            ratios={key: figures[ratio] for key, ratio in RATIOS.items()},
                            ratios_int8={key: figures[ratio] for key, ratio in RATIOS_INT8.items()},
                            memory_mb=figures[SUMMARY_RSS], decision=files[GATE].get("decision"),
                            class_drops=files[GATE].get(CLASS_DROP) or {}))
        gate = files.get(PARAMS, {}).get("gate") or {}
        for found_bounds, key in ((bounds, DROP_BOUNDS[basis]), (class_bounds, CLASS_BOUND)):
            if isinstance(gate.get(key), (int, float)) and not isinstance(gate.get(key), bool):
                found_bounds.append(gate[key])
    fronts = {key: non_dominated(points, _f1, _cost(key)) for key in COSTS}
    return Front(basis=basis, points=points, teacher=_teacher([files for _, _, files in found.values()], basis),
                 fronts=fronts, left_out=left_out, max_drop_points=min(bounds, default=None),
                 max_class_drop_points=min(class_bounds, default=None))


def teacher_fp32(front: Front) -> Point | None:
    return next((point for point in front.teacher if point.name == f"teacher {FP32}"), None)


def f1_bound(front: Front) -> tuple[float, str] | None:
    """The lowest F1 the gates accept on the front's basis (the teacher's fp32 F1 less the strictest drop
    bound) and its caption; None without a bound or a teacher reference."""
    teacher = teacher_fp32(front)
    if teacher is None or front.max_drop_points is None:
        return None
    return (teacher.f1 - front.max_drop_points / 100,
            f"gate bound: teacher fp32 F1 - {front.max_drop_points:g} points")


def recommend(front: Front, cost: str = SUMMARY_P50) -> Point | None:
    """The cheapest experiment on `cost` whose F1 is within the gates' drop bound of the teacher's (in
    fp32), whose gold drop per entity type, where its gate measured one, is within the gates' per-type
    bound, and whose gate did not say NO-GO (memory, a floor): cheapest by its cost over the teacher in its
    own bench, where every point has that ratio (benches run at different times drift alike for teacher
    and student), else by the raw cost; among those within LATENCY_TIE of the cheapest, the smallest on
    disk. None without a bound, a teacher reference or such an experiment."""
    teacher = teacher_fp32(front)
    if teacher is None or front.max_drop_points is None:
        return None
    within = [point for point in front.points
              if 100 * (teacher.f1 - point.f1) <= front.max_drop_points and point.decision != NOGO
              and _classes_within(front, point)]
    if not within:
        return None
    by_ratio = all(point.ratios.get(cost) is not None for point in within)
    key = (lambda point: point.ratios[cost]) if by_ratio else _cost(cost)
    cheapest = key(min(within, key=key))
    return min((point for point in within if key(point) <= cheapest * (1 + LATENCY_TIE)), key=_cost(SUMMARY_BYTES))


def _classes_within(front: Front, point: Point) -> bool:
    """Whether no entity type of `point` lost more gold F1 than the gates' per-type bound; true where either
    is unknown (agreement basis, results or params older than the bound)."""
    bound = front.max_class_drop_points
    return bound is None or not point.class_drops or max(point.class_drops.values()) <= bound


def _f1(point: Point) -> float:
    return point.f1


def _cost(key: str) -> Callable[[Point], float]:
    return lambda point: point.costs[key]


def _teacher(runs: list[dict], basis: str) -> list[Point]:
    """The teacher in fp32 and int8, the median over the experiments that measured it (each bench
    times it again beside its student); drawn at the teacher's F1, which evaluate scores in fp32."""
    out = []
    for variant in (FP32, INT8):
        measured = []
        for files in runs:
            bench, eval_metrics = files.get(BENCH, {}), files.get(EVAL, {})
            try:
                teacher = lookup(bench, ("teacher",), "bench")
                measured.append((number(eval_metrics, f1_path(basis, teacher), "eval"),
                                 number(bench, variant_path(variant, "doc_p50_ms", teacher), "bench"),
                                 number(bench, ("models", teacher, "disk_bytes"), "bench")))
            except ValueError:
                continue
        if measured:
            f1, p50, size = (statistics.median(column) for column in zip(*measured))
            out.append(Point(name=f"teacher {variant}", label=f"teacher {variant}", f1=f1,
                             costs={SUMMARY_P50: p50, SUMMARY_BYTES: size}))
    return out
