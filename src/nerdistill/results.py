"""The contract of the result files: what evaluate, bench and gate write and what gate and report read.

metrics/eval.json: `teacher`, `final` (model names); per basis (`agreement`, and `gold` when a
gold set was scored) `{model: {"f1", "precision", "recall", "support", "per_type"}}`;
`f1_drop_points: {basis: {model: teacher - model, in F1 points}}`.
metrics/bench.json: `teacher`, `final`; `models: {model: {"parameters", "disk_bytes", "variants":
{variant: {"doc_p50_ms", "peak_rss_mb", ..., and for int8/ONNX "f1_agreement", "f1_drop_points"}}}}`;
`ratios: {figure: final / teacher}`.
metrics/gate.json: `decision`, `basis`, `model`, `variant`, `checks`, `variants`.

Key paths are tuples; FINAL in a path stands for the final student's name.
"""
from __future__ import annotations

import math
from typing import Any

FP32, INT8, CUDA, ONNX = "cpu_fp32", "cpu_int8", "cuda_fp32", "cpu_onnx"
GO, REVIEW, NOGO = "GO", "REVIEW", "NO-GO"
AGREEMENT, GOLD = "agreement", "gold"
FINAL = "{final}"


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
    """The decision and each check on one line each, what `nerdistill gate` prints and report shows."""
    lines = [f"{result['decision']}  ({result['model']} {result['variant']}, F1 basis: {result['basis']})"]
    for check in result["checks"]:
        mark = "pass" if check["passed"] else f"FAIL ({check['on_fail']})"
        lines.append(f"  {mark}  {check['name']} = {check['value']:.2f} (threshold {check['threshold']:g}): "
                     f"{check['source']}")
    return "\n".join(lines)
