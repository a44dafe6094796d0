"""The contract of the result files: what evaluate, bench and gate write and what gate and report read.

Models are named as `--model NAME=FOLDER` names them (the teacher is `teacher`): students
(`distilled`, `pruned`, `final`) and ONNX exports (`onnx_fp32`, `onnx_int8`). Each model has one
natural variant, the one evaluate scores: `cpu_onnx` for an ONNX export, `cpu_fp32` otherwise.

metrics/eval.json: `teacher`, `final` (model names); per basis (`agreement`, and `gold` when a
gold set was scored) `{model: {"f1", "precision", "recall", "support", "per_type"}}` for every
model, ONNX exports included; `f1_drop_points: {basis: {model: teacher - model, in F1 points}}`.
metrics/bench.json: `teacher`, `final`; `models: {model: {"kind", "parameters", "disk_bytes",
"variants": {variant: {"doc_p50_ms", "peak_rss_mb", ..., and for int8/ONNX "f1_agreement",
"f1_drop_points"}}}}`; `ratios`: `{figure: final / teacher}` (cpu_fp32 both, `int8_doc_p50_ms`
int8 both) and `{vs_teacher_fp32(subject, figure): subject / teacher cpu_fp32}` for `final_int8`
and for every ONNX export.
metrics/gate.json: the flat summary `GATE_KEYS` of the one variant judged (`gate.variant`): its
decision, the F1 basis, the model and variant, its F1 and F1 drop on that basis, its CPU p50
latency, bytes on disk and peak memory, latency and size over the teacher's fp32 figures (null
when the teacher's is unknown), and `checks` (name, value, threshold, passed, on_fail, source).
Sweep and Pareto reports read these keys, nothing deeper.

Key paths are tuples; FINAL in a path stands for the final student's name.
"""
from __future__ import annotations

import math
from typing import Any

FP32, INT8, CUDA, ONNX = "cpu_fp32", "cpu_int8", "cuda_fp32", "cpu_onnx"
CPU_VARIANTS = (FP32, INT8, ONNX)
GO, REVIEW, NOGO = "GO", "REVIEW", "NO-GO"
AGREEMENT, GOLD = "agreement", "gold"
FINAL = "{final}"
# gate.json's flat figures of the judged (shipped) variant; ratios are to the teacher's cpu_fp32.
SUMMARY_F1, SUMMARY_DROP, SUMMARY_P50, SUMMARY_BYTES = "f1", "f1_drop_points", "doc_p50_ms", "disk_bytes"
SUMMARY_RSS = "peak_rss_mb"
SUMMARY_LATENCY_RATIO, SUMMARY_SIZE_RATIO = "latency_ratio_vs_teacher_fp32", "size_ratio_vs_teacher_fp32"
SUMMARY_KEYS = (SUMMARY_F1, SUMMARY_DROP, SUMMARY_P50, SUMMARY_BYTES, SUMMARY_RSS, SUMMARY_LATENCY_RATIO,
                SUMMARY_SIZE_RATIO)
GATE_KEYS = ("decision", "basis", "model", "variant", *SUMMARY_KEYS, "checks")


def natural_variant(kind: str) -> str:
    """The variant of a model of `kind` ("student", "teacher", "onnx") that evaluate scores."""
    return ONNX if kind == "onnx" else FP32


def vs_teacher_fp32(subject: str, figure: str) -> str:
    """The bench `ratios` key of `subject`'s figure over the teacher's cpu_fp32 one."""
    return f"{subject}_vs_teacher_fp32_{figure}"


def f1_path(basis: str, model: str = FINAL) -> tuple[str, ...]:
    return (basis, model, "f1")


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


def gate_summary(result: dict) -> str:
    """The decision, each check and the size on one line each, what `nerdistill gate` prints and report shows."""
    lines = [f"{result['decision']}  ({result['model']} {result['variant']}, F1 basis: {result['basis']})"]
    for check in result["checks"]:
        mark = "pass" if check["passed"] else f"FAIL ({check['on_fail']})"
        lines.append(f"  {mark}  {check['name']} = {check['value']:.2f} (threshold {check['threshold']:g}): "
                     f"{check['source']}")
    size = "unknown" if result["disk_bytes"] is None else f"{result['disk_bytes'] / 1e6:.2f} MB"
    lines.append(f"  size on disk {size}; over the teacher's fp32: latency "
                 f"{_ratio(result['latency_ratio_vs_teacher_fp32'])}, "
                 f"size {_ratio(result['size_ratio_vs_teacher_fp32'])}")
    return "\n".join(lines)


def _ratio(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.3f}"


def summary(gate: dict, bench: dict, eval_metrics: dict) -> dict[str, float]:
    """The judged variant's figures: gate.json's flat summary, or, for a gate.json written before it
    had one (older experiments), the same figures read from bench and eval for its model and variant."""
    if all(key in gate for key in SUMMARY_KEYS):
        return {key: number(gate, (key,), "gate") for key in SUMMARY_KEYS}
    model, variant, basis = (lookup(gate, (key,), "gate") for key in ("model", "variant", "basis"))
    teacher = lookup(bench, ("teacher",), "bench")
    if variant == FP32:  # evaluate scores the fp32 students; bench scores the other variants on agreement
        f1 = number(eval_metrics, f1_path(basis, model), "eval")
        drop = number(eval_metrics, drop_path(basis, model), "eval")
    else:
        f1 = number(bench, variant_path(variant, "f1_agreement", model), "bench")
        drop = number(bench, variant_path(variant, "f1_drop_points", model), "bench")
    p50 = number(bench, variant_path(variant, "doc_p50_ms", model), "bench")
    size = number(bench, ("models", model, "disk_bytes"), "bench")
    return {SUMMARY_F1: f1, SUMMARY_DROP: drop, SUMMARY_P50: p50, SUMMARY_BYTES: size,
            SUMMARY_RSS: number(bench, variant_path(variant, "peak_rss_mb", model), "bench"),
            SUMMARY_LATENCY_RATIO: p50 / number(bench, variant_path(FP32, "doc_p50_ms", teacher), "bench"),
            SUMMARY_SIZE_RATIO: size / number(bench, ("models", teacher, "disk_bytes"), "bench")}
