"""GO / REVIEW / NO-GO for the one model variant `gate.variant` names, from the evaluate and bench metrics.

`gate.variant` is `MODEL[:VARIANT]`, MODEL a `--model` name of evaluate and bench. The default,
`onnx_int8`, is the int8 ONNX export: what ships is what is judged (a service loads that file, not
the PyTorch student), and evaluate scores it like every model, on gold too, so its quality is
measured rather than inferred from the fp32 student. Without VARIANT a model is judged on its
natural variant (`results.natural_variant`: cpu_onnx for an export, cpu_fp32 for a PyTorch
folder); `final:cpu_int8` judges bench's dynamic-int8 copy of the final student.

Checks, all on that one variant:
- quality, on the gold basis when evaluate scored a gold set: the F1 drop, teacher - model in
  points, <= gate.max_f1_drop, else NO-GO. Without gold only agreement exists (F1 against the
  teacher's own tags), which counts the teacher's mistakes as the model's: a model may disagree
  and be right. So the agreement drop, 100 x (1 - agreement F1), has its own bound,
  gate.max_agreement_drop, and past it the verdict is REVIEW (score a gold set to decide), never
  a gold threshold applied to agreement. A torch cpu_int8 variant has only bench's agreement F1
  (evaluate does not score it), so it is judged on the agreement basis.
- a floor: the F1 on that basis >= gate.min_f1, else NO-GO whatever the drop (a useless teacher
  makes any drop look small).
- CPU p50 batch-1 latency on the ~bench.doc_tokens document < gate.go_latency_ms.
- peak resident memory of the process that loaded and ran the variant < gate.max_memory_mb.
Size is reported, not checked: bytes on disk of the variant (null for cpu_int8, quantised in
memory and never saved), and latency and size over the teacher's fp32 figures. No seed criterion
bounds size, and peak memory already bounds what a CPU box must hold.

Decision: NO-GO when a check whose failure is NO-GO fails (gold drop, floor, memory) or the
latency exceeds gate.nogo_latency_ms; GO when every check passes; otherwise REVIEW (the
agreement drop past its bound, or a latency in [go_latency_ms, nogo_latency_ms], a band the
seeds' criteria neither accept nor reject), so a person decides. Each check records what its
failure means (`on_fail`). gate.json is the flat summary `results.GATE_KEYS`.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from nerdistill.io import read_json
from nerdistill.params import Params, ParamsError
from nerdistill.results import AGREEMENT, CPU_VARIANTS, FP32, GO, GOLD, INT8, NOGO, REVIEW, drop_path, f1_path, \
    gate_summary, lookup, natural_variant, number, variant_path
from nerdistill.tracking import tracked_stage

log = logging.getLogger(__name__)


def run(params: Params, eval_metrics: dict, bench_metrics: dict) -> dict:
    model, variant = _judged(params, eval_metrics, bench_metrics)
    # evaluate scores each model's natural variant; bench scores the int8 copy, on agreement only.
    basis = GOLD if eval_metrics.get(GOLD) and variant != INT8 else AGREEMENT
    if variant == INT8:
        f1 = number(bench_metrics, variant_path(variant, "f1_agreement", model), "bench")
        drop = number(bench_metrics, variant_path(variant, "f1_drop_points", model), "bench")
    else:
        f1 = number(eval_metrics, f1_path(basis, model), "eval")
        drop = number(eval_metrics, drop_path(basis, model), "eval")
    latency = number(bench_metrics, variant_path(variant, "doc_p50_ms", model), "bench")
    memory = number(bench_metrics, variant_path(variant, "peak_rss_mb", model), "bench")
    disk = None if variant == INT8 else lookup(bench_metrics, ("models", model, "disk_bytes"), "bench")
    teacher = lookup(bench_metrics, ("teacher",), "bench")
    teacher_latency = number(bench_metrics, variant_path(FP32, "doc_p50_ms", teacher), "bench")
    teacher_disk = lookup(bench_metrics, ("models", teacher, "disk_bytes"), "bench")

    checks = _checks(params, bench_metrics, f"{model} ({variant})", basis, f1, drop, latency, memory)
    failed = [check for check in checks if not check["passed"]]
    nogo = any(check["on_fail"] == NOGO for check in failed) or latency > params.gate.nogo_latency_ms
    result = {
        "decision": NOGO if nogo else REVIEW if failed else GO, "basis": basis, "model": model, "variant": variant,
        "f1": f1, "f1_drop_points": drop, "doc_p50_ms": latency, "disk_bytes": disk, "peak_rss_mb": memory,
        "latency_ratio_vs_teacher_fp32": latency / teacher_latency,
        "size_ratio_vs_teacher_fp32": disk / teacher_disk if disk is not None and teacher_disk else None,
        "checks": checks,
    }
    log.info("gate: %s (%s basis, %s %s)", result["decision"], basis, model, variant)
    return result


def exit_code(result: dict, params: Params) -> int:
    """Process exit status for the gate command: 1 on NO-GO when gate.fail_on_nogo, else 0."""
    return 1 if result["decision"] == NOGO and params.gate.fail_on_nogo else 0


def _judged(params: Params, eval_metrics: dict, bench_metrics: dict) -> tuple[str, str]:
    """(model, variant) named by gate.variant, checked against what bench measured and evaluate scored."""
    model, _, variant = params.gate.variant.partition(":")
    variant = variant or None  # left to the model's kind
    models = lookup(bench_metrics, ("models",), "bench")
    measured = [f"{name}:{v}" for name, entry in models.items() for v in entry.get("variants", {}) if v in CPU_VARIANTS]
    hint = (f"it measured {', '.join(measured)}: set gate.variant to one of them (MODEL:VARIANT, or MODEL for its "
            "natural variant) or add the model to bench's --model")
    if model not in models:
        raise ParamsError(f"gate.variant = {params.gate.variant!r}: bench measured no model {model!r}; {hint}")
    variant = variant or natural_variant(lookup(bench_metrics, ("models", model, "kind"), "bench"))
    if variant not in CPU_VARIANTS or variant not in models[model].get("variants", {}):
        raise ParamsError(f"gate.variant = {params.gate.variant!r}: bench measured no CPU variant {variant!r} of "
                          f"{model!r}; {hint}")
    scored = sorted(eval_metrics.get(AGREEMENT, {}))
    if variant != INT8 and model not in scored:
        raise ParamsError(f"gate.variant = {params.gate.variant!r}: evaluate scored no model {model!r}; it scored "
                          f"{', '.join(scored)}. Add it to evaluate's --model or pick one of those")
    return model, variant


def _checks(params: Params, bench_metrics: dict, judged: str, basis: str, f1: float, drop: float, latency: float,
            memory: float) -> list[dict]:
    gate = params.gate
    if basis == GOLD:
        quality = _check("f1_drop_points", drop, gate.max_f1_drop, drop <= gate.max_f1_drop, NOGO,
                         f"teacher - {judged} F1 on the gold set, in points")
    else:
        quality = _check("agreement_drop_points", drop, gate.max_agreement_drop, drop <= gate.max_agreement_drop,
                         REVIEW, f"100 x (1 - F1 of {judged} against the teacher's own tags); no gold score for "
                         "it, so disagreement may be the teacher's error: set evaluate.gold_path to decide")
    return [
        quality,
        _check("f1", f1, gate.min_f1, f1 >= gate.min_f1, NOGO, f"F1 of {judged} on the {basis} basis"),
        {**_check("cpu_latency_p50_ms", latency, gate.go_latency_ms, latency < gate.go_latency_ms, REVIEW,
                  f"{judged} batch-1 p50 on a {bench_metrics.get('doc_tokens', '?')}-token document, "
                  f"{bench_metrics.get('threads', '?')} CPU threads"),
         "nogo_threshold": gate.nogo_latency_ms},
        _check("peak_memory_mb", memory, gate.max_memory_mb, memory < gate.max_memory_mb, NOGO,
               f"peak resident memory of a fresh process loading and running {judged}"),
    ]


def _check(name: str, value: float, threshold: float, passed: bool, on_fail: str, source: str) -> dict:
    return {"name": name, "value": value, "threshold": threshold, "passed": passed, "on_fail": on_fail,
            "source": source}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--eval", type=Path, required=True, help="evaluate's metrics JSON")
    parser.add_argument("--bench", type=Path, required=True, help="bench's metrics JSON")
    parser.add_argument("--out", type=Path, required=True, help="gate.json")


def main(args: argparse.Namespace, params: Params) -> int:
    eval_metrics, bench_metrics = read_json(args.eval), read_json(args.bench)
    result = tracked_stage("gate", params, args.params, args.out, lambda: run(params, eval_metrics, bench_metrics),
                           to_parent=True, parent_tags=lambda result: {"gate": result["decision"]})
    print(gate_summary(result))
    return exit_code(result, params)
