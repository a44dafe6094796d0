"""The contract of the result files: their paths, what evaluate, bench and gate write, and the judged
figures, computed here once (`judged_figures`) for the gate, the report and the Pareto front.

Models are named as `--model NAME=FOLDER` names them (the teacher is `teacher`): students
(`distilled`, `pruned`, `final`), ONNX exports (`onnx_fp32`, `onnx_int8`) and the teacher's own
int8 export (`teacher_int8`, the baseline a user would pick instead of distilling). Each model has
one natural variant, the one evaluate scores: `cpu_onnx` for an ONNX export, `cpu_fp32` otherwise.

metrics/eval.json: `teacher`, `final` (model names); per basis (`agreement`, and `gold` when a
gold set was scored) `{model: {"f1", "precision", "recall", "support", "per_type"}}` for every
model, ONNX exports included; `f1_drop_points: {basis: {model: teacher - model, in F1 points}}`.
metrics/bench.json: `teacher`, `final`, `unstable` ("model:variant" whose p95/p50 spread stayed
above `max_spread`); `models: {model: {"kind", "parameters", "disk_bytes", "variants": {variant:
{"doc_p50_ms", "doc_p95_ms", "p95_over_p50", "peak_rss_mb", ..., and for int8/ONNX "f1_agreement",
"f1_drop_points"}}}}`; `ratios`: `{figure: final / teacher}` (cpu_fp32 both, `int8_doc_p50_ms`
int8 both) and `{vs_teacher_fp32(subject, figure): subject / teacher cpu_fp32}`.
metrics/export.json: per export (`fp32`, `int8`) its bytes and fidelity to the PyTorch student on
the test split (`f1_vs_pytorch`), and the vocabulary trimming's `heldout_segmentation`.
metrics/gate.json: `GATE_KEYS`, decision first: the F1 basis, the judged variant, its F1 and F1 drop,
its latency and size over the teacher's fp32, its gold F1 drop per entity type (`class_f1_drop_points`,
null without gold); then the judged model, both over the teacher's int8 export (null when unknown),
its p50, bytes and peak memory, the p95/p50 spread of the judged variant and of the teacher
references its ratios divide by, and `checks` (name, value, threshold, passed, on_fail, source).
Sweep and Pareto reports read these keys, nothing deeper.

Key paths are tuples; FINAL in a path stands for the final student's name.
"""
from __future__ import annotations

import math
from typing import Any

# Every metrics file a stage writes, as dvc.yaml declares it (tests/test_results.py holds them equal).
METRICS_FILES = {stage: f"metrics/{stage}.json" for stage in (
    "annotate", "distill", "prune", "finetune", "export", "export_teacher", "evaluate", "bench", "gate")}
METRICS_FILES["evaluate"] = "metrics/eval.json"
EVAL, BENCH, GATE, EXPORT, PRUNE = (METRICS_FILES[stage] for stage in ("evaluate", "bench", "gate", "export",
                                                                       "prune"))
PARAMS_FILE = "params.yaml"

FP32, INT8, CUDA, ONNX = "cpu_fp32", "cpu_int8", "cuda_fp32", "cpu_onnx"
CPU_VARIANTS = (FP32, INT8, ONNX)
GO, REVIEW, NOGO = "GO", "REVIEW", "NO-GO"
AGREEMENT, GOLD = "agreement", "gold"
FINAL = "{final}"
TEACHER_INT8 = "teacher_int8"
EXPORTS = {"onnx_fp32": "fp32", "onnx_int8": "int8"}  # an export's --model name -> its export.json entry
# gate.json's flat figures of the judged (shipped) variant.
SUMMARY_F1, SUMMARY_DROP, SUMMARY_P50, SUMMARY_BYTES = "f1", "f1_drop_points", "doc_p50_ms", "disk_bytes"
SUMMARY_RSS = "peak_rss_mb"
SUMMARY_LATENCY_RATIO, SUMMARY_SIZE_RATIO = "latency_ratio_vs_teacher_fp32", "size_ratio_vs_teacher_fp32"
SUMMARY_LATENCY_RATIO_INT8, SUMMARY_SIZE_RATIO_INT8 = "latency_ratio_vs_teacher_int8", "size_ratio_vs_teacher_int8"
SUMMARY_KEYS = (SUMMARY_F1, SUMMARY_DROP, SUMMARY_LATENCY_RATIO, SUMMARY_SIZE_RATIO, SUMMARY_LATENCY_RATIO_INT8,
                SUMMARY_SIZE_RATIO_INT8, SUMMARY_P50, SUMMARY_BYTES, SUMMARY_RSS)
SPREAD = "p95_over_p50"
CLASS_DROP = "class_f1_drop_points"  # {entity type: teacher - judged gold F1, in points}
# Decision first, then what a reviewer weighs it by (F1, its drop, latency and size over the teacher, the drop
# per entity type), then the detail: `dvc metrics show`, `dvc exp show` and the report read the file in this order.
GATE_KEYS = ("decision", "basis", "variant", SUMMARY_F1, SUMMARY_DROP, SUMMARY_LATENCY_RATIO, SUMMARY_SIZE_RATIO,
             CLASS_DROP, "model", SUMMARY_LATENCY_RATIO_INT8, SUMMARY_SIZE_RATIO_INT8, SUMMARY_P50, SUMMARY_BYTES,
             SUMMARY_RSS, SPREAD, "checks")


def natural_variant(kind: str) -> str:
    """The variant of a model of `kind` ("student", "teacher", "onnx") that evaluate scores."""
    return ONNX if kind == "onnx" else FP32


def vs_teacher_fp32(subject: str, figure: str) -> str:
    """The bench `ratios` key of `subject`'s figure over the teacher's cpu_fp32 one."""
    return f"{subject}_vs_teacher_fp32_{figure}"


def f1_path(basis: str, model: str = FINAL) -> tuple[str, ...]:
    return (basis, model, "f1")


def per_type_path(basis: str, model: str = FINAL) -> tuple[str, ...]:
    return (basis, model, "per_type")


def drop_path(basis: str, model: str = FINAL) -> tuple[str, ...]:
    return ("f1_drop_points", basis, model)


def variant_path(variant: str, figure: str, model: str = FINAL) -> tuple[str, ...]:
    return ("models", model, "variants", variant, figure)


def ratio_path(figure: str) -> tuple[str, ...]:
    return ("ratios", figure)


def lookup(tree: dict, path: tuple[str, ...], where: str) -> Any:
    """The value at `path`; a missing key names the file and the path, and how to rewrite it."""
    node: Any = tree
    for depth, key in enumerate(path):
        if not isinstance(node, dict) or key not in node:
            raise ValueError(f"{where} metrics lack the key {'.'.join(path[:depth + 1])!r}; re-run the stage "
                             "that writes them (dvc repro evaluate bench)")
        node = node[key]
    return node


def number(tree: dict, path: tuple[str, ...], where: str) -> float:
    value = lookup(tree, path, where)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where} {'.'.join(path)} = {value!r}; the gate needs a finite number")
    return float(value)


def worst_class(drops: dict[str, float]) -> str:
    """The entity type that lost the most F1 points; ties go to the first name alphabetically."""
    return max(sorted(drops), key=drops.__getitem__)


def gate_summary(result: dict) -> str:
    """The decision, each check and the size on one line each, what `nerdistill gate` prints and report shows."""
    lines = [f"{result['decision']}  ({result['model']} {result['variant']}, F1 basis: {result['basis']})"]
    for check in result["checks"]:
        mark = "pass" if check["passed"] else f"FAIL ({check['on_fail']})"
        lines.append(f"  {mark}  {check['name']} = {_figure(check['value'], '.2f')} (threshold "
                     f"{_figure(check['threshold'], 'g')}): {check['source']}")
    size = "unknown" if result["disk_bytes"] is None else f"{result['disk_bytes'] / 1e6:.2f} MB"
    lines.append(f"  size on disk {size}; latency, size over the teacher's fp32: "
                 f"{_figure(result[SUMMARY_LATENCY_RATIO], '.3f')}, {_figure(result[SUMMARY_SIZE_RATIO], '.3f')}; "
                 f"over its own int8 export: {_figure(result.get(SUMMARY_LATENCY_RATIO_INT8), '.3f')}, "
                 f"{_figure(result.get(SUMMARY_SIZE_RATIO_INT8), '.3f')}")
    return "\n".join(lines)


def _figure(value: float | None, spec: str) -> str:
    return "unknown" if value is None else format(value, spec)


def judged_basis(variant: str, eval_metrics: dict) -> str:
    """Gold when evaluate scored a gold set, except for bench's in-memory int8 copy (scored on agreement only)."""
    return GOLD if eval_metrics.get(GOLD) and variant != INT8 else AGREEMENT


def judged_figures(model: str, variant: str, eval_metrics: dict, bench: dict) -> dict[str, float | None]:
    """`SUMMARY_KEYS` of `model:variant`: F1 and drop on its basis, latency and size, and both against the
    teacher in fp32 and against the teacher's own int8 export (None where either side is unknown)."""
    basis = judged_basis(variant, eval_metrics)
    if variant == INT8:
        f1 = number(bench, variant_path(variant, "f1_agreement", model), "bench")
        drop = number(bench, variant_path(variant, "f1_drop_points", model), "bench")
    else:
        f1 = number(eval_metrics, f1_path(basis, model), "eval")
        drop = number(eval_metrics, drop_path(basis, model), "eval")
    p50 = number(bench, variant_path(variant, "doc_p50_ms", model), "bench")
    size = None if variant == INT8 else _optional(bench, ("models", model, "disk_bytes"))
    teacher = lookup(bench, ("teacher",), "bench")
    bases = {SUMMARY_LATENCY_RATIO: (p50, _optional(bench, variant_path(FP32, "doc_p50_ms", teacher))),
             SUMMARY_SIZE_RATIO: (size, _optional(bench, ("models", teacher, "disk_bytes"))),
             SUMMARY_LATENCY_RATIO_INT8: (p50, _optional(bench, variant_path(ONNX, "doc_p50_ms", TEACHER_INT8))),
             SUMMARY_SIZE_RATIO_INT8: (size, _optional(bench, ("models", TEACHER_INT8, "disk_bytes")))}
    ratios = {key: value / base if value is not None and base else None for key, (value, base) in bases.items()}
    return {SUMMARY_F1: f1, SUMMARY_DROP: drop, **ratios, SUMMARY_P50: p50, SUMMARY_BYTES: size,
            SUMMARY_RSS: number(bench, variant_path(variant, "peak_rss_mb", model), "bench")}


def summary(gate: dict, bench: dict, eval_metrics: dict) -> dict[str, float | None]:
    """The judged variant's figures: gate.json's own, or, for a gate.json written before it held them all
    (older experiments), the same `judged_figures` of the model and variant it names."""
    if all(key in gate for key in SUMMARY_KEYS if key not in (SUMMARY_LATENCY_RATIO_INT8, SUMMARY_SIZE_RATIO_INT8)):
        return {key: gate.get(key) for key in SUMMARY_KEYS}  # the ratios to the teacher's int8 came later
    return judged_figures(lookup(gate, ("model",), "gate"), lookup(gate, ("variant",), "gate"), eval_metrics, bench)


def _optional(tree: dict, path: tuple[str, ...]) -> float | None:
    """The number at `path`, or None where the measurement is missing (a hub teacher not cached, no teacher
    int8 export in an older bench)."""
    try:
        return number(tree, path, "bench")
    except ValueError:
        return None
