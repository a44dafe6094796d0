"""GO / REVIEW / NO-GO for the one model variant `gate.variant` names, from the evaluate, bench and export metrics.

`gate.variant` is `MODEL[:VARIANT]`, MODEL a `--model` name of evaluate and bench. The default,
`onnx_int8`, is the int8 ONNX export: what ships is what is judged (a service loads that file, not
the PyTorch student), and evaluate scores it like every model, on gold too, so its quality is
measured rather than inferred from the fp32 student. Without VARIANT a model is judged on its
natural variant (`results.natural_variant`: cpu_onnx for an export, cpu_fp32 for a PyTorch
folder); `final:cpu_int8` judges bench's dynamic-int8 copy of the final student. Its figures are
`results.judged_figures`, the one computation the report and the Pareto front read too.

Checks, all on that one variant:
- quality, on the gold basis when evaluate scored a gold set: the F1 drop, teacher - model in
  points, <= gate.max_f1_drop, else NO-GO. Without gold only agreement exists (F1 against the
  teacher's own tags), which counts the teacher's mistakes as the model's: a model may disagree
  and be right. So the agreement drop (teacher - model agreement F1, in points) has its own bound,
  gate.max_agreement_drop, and past it the verdict is REVIEW (score a gold set to decide), never
  a gold threshold applied to agreement. A torch cpu_int8 variant has only bench's agreement F1
  (evaluate does not score it), so it is judged on the agreement basis.
- on the gold basis, the drop per entity type the teacher was scored on (teacher - model gold F1 in
  points) <= gate.max_class_f1_drop, else REVIEW: an overall drop within bound can hide one type
  losing much more. Without gold the check is absent and `class_f1_drop_points` null.
- a floor: the F1 on that basis >= gate.min_f1, else NO-GO whatever the drop (a useless teacher
  makes any drop look small).
- without gold, the export's fidelity: the int8 (or fp32) export's F1 against the PyTorch student on
  the test split the trimmed vocabulary never saw >= gate.min_export_fidelity, else REVIEW.
- the latency figures are steady: no judged variant nor teacher reference had a p95/p50 spread past
  bench.max_spread after bench's retries, else REVIEW, and the latency checks below are reported
  but not judged (a busy machine biases every ratio, usually in the student's favour).
- CPU p50 batch-1 latency on the ~bench.doc_tokens document < gate.go_latency_ms.
- that latency over the teacher's own int8 export (what quantising alone gives) <=
  gate.max_latency_ratio_vs_teacher_int8, else REVIEW: the student must earn its training cost.
- peak resident memory of the process that loaded and ran the variant < gate.max_memory_mb.
Size is reported, not checked: bytes on disk (null for cpu_int8, quantised in memory and never
saved) over the teacher's fp32 and int8 figures. Peak memory already bounds what a CPU box holds.

Decision: NO-GO when a check whose failure is NO-GO fails (gold drop, floor, memory) or a steady
latency exceeds gate.nogo_latency_ms; GO when every check passes; otherwise REVIEW, so a person
decides. Each check records what its failure means (`on_fail`). gate.json: `results.GATE_KEYS`.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from nerdistill.io import read_json
from nerdistill.params import Params, ParamsError
from nerdistill.results import AGREEMENT, CLASS_DROP, CPU_VARIANTS, EXPORTS, FP32, GATE_KEYS, GO, GOLD, INT8, NOGO, \
    ONNX, REVIEW, SPREAD, SUMMARY_DROP, SUMMARY_F1, SUMMARY_KEYS, SUMMARY_LATENCY_RATIO_INT8, SUMMARY_P50, \
    SUMMARY_RSS, TEACHER_INT8, gate_summary, judged_basis, judged_figures, lookup, natural_variant, number, \
    per_type_path, worst_class
from nerdistill.tracking import ONNX_DIGEST, StageRun, tracked_stage

log = logging.getLogger(__name__)


def run(params: Params, eval_metrics: dict, bench_metrics: dict, export_metrics: dict | None = None) -> dict:
    model, variant = _judged(params, eval_metrics, bench_metrics)
    basis = judged_basis(variant, eval_metrics)
    figures = judged_figures(model, variant, eval_metrics, bench_metrics)
    class_drops = _class_drops(eval_metrics, model) if basis == GOLD else None
    spreads = _spreads(bench_metrics)
    checks = _checks(params, bench_metrics, export_metrics, model, variant, basis, figures, class_drops, spreads)
    failed = [check for check in checks if not check["passed"]]
    steady = all(check["passed"] for check in checks if check["name"] == "latency_stable")
    nogo = any(check["on_fail"] == NOGO for check in failed) or (
        steady and figures[SUMMARY_P50] > params.gate.nogo_latency_ms)
    # Only the spreads the stability check watched: every variant's is in bench.json, and here they would
    # bury the decision in `dvc metrics diff`.
    watched = {key: spreads[key] for key in _references(bench_metrics, f"{model}:{variant}") if key in spreads}
    values = {"decision": NOGO if nogo else REVIEW if failed else GO, "basis": basis, "model": model,
              "variant": variant, **figures, CLASS_DROP: class_drops, SPREAD: watched, "checks": checks}
    result = {key: values[key] for key in GATE_KEYS}  # decision first
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


def _class_drops(eval_metrics: dict, model: str) -> dict[str, float]:
    """Teacher - model gold F1 in points per entity type the teacher was scored on. A type missing from the
    model's scores is neither in the gold set nor among its predictions: F1 0, as seqeval's zero_division=0."""
    def f1(name: str, entity_type: str) -> float:
        path = per_type_path(GOLD, name)
        return number(eval_metrics, (*path, entity_type, "f1"), "eval") if entity_type in lookup(
            eval_metrics, path, "eval") else 0.0

    teacher = lookup(eval_metrics, ("teacher",), "eval")
    # Rounded: float noise in the difference of two F1s (0.88 - 0.86) must not put a drop at the bound past it.
    return {entity_type: round(100 * (f1(teacher, entity_type) - f1(model, entity_type)), 6)
            for entity_type in lookup(eval_metrics, per_type_path(GOLD, teacher), "eval")}


def _spreads(bench: dict) -> dict[str, float]:
    """p95/p50 of the document latency of every CPU variant bench measured, as "model:variant" -> spread."""
    out = {}
    for name, model in lookup(bench, ("models",), "bench").items():
        for variant, figures in model.get("variants", {}).items():
            if variant not in CPU_VARIANTS:
                continue
            if SPREAD in figures:
                out[f"{name}:{variant}"] = figures[SPREAD]
            elif figures.get("doc_p95_ms") and figures.get("doc_p50_ms"):  # a bench.json older than the key
                out[f"{name}:{variant}"] = figures["doc_p95_ms"] / figures["doc_p50_ms"]
    return out


def _checks(params: Params, bench: dict, export: dict | None, model: str, variant: str, basis: str,
            figures: dict, class_drops: dict[str, float] | None, spreads: dict[str, float]) -> list[dict]:
    gate, judged = params.gate, f"{model} ({variant})"
    f1, drop = figures[SUMMARY_F1], figures[SUMMARY_DROP]
    if basis == GOLD:
        quality = _check("f1_drop_points", drop, gate.max_f1_drop, drop <= gate.max_f1_drop, NOGO,
                         f"teacher - {judged} F1 on the gold set, in points")
    else:
        quality = _check("agreement_drop_points", drop, gate.max_agreement_drop, drop <= gate.max_agreement_drop,
                         REVIEW, f"teacher - {judged} F1 against the teacher's own tags, in points; no gold score "
                         "for it, so disagreement may be the teacher's error: set evaluate.gold_path to decide")
    checks = [quality]
    if class_drops:
        worst = worst_class(class_drops)
        listed = ", ".join(f"{name} {class_drops[name]:.2f}" for name in sorted(class_drops))
        checks.append({**_check(CLASS_DROP, class_drops[worst], gate.max_class_f1_drop,
                                class_drops[worst] <= gate.max_class_f1_drop, REVIEW,
                                f"teacher - {judged} F1 on the gold set per entity type, in points, worst {worst}: "
                                f"{listed}"),
                       "worst_class": worst})
    checks.append(_check("f1", f1, gate.min_f1, f1 >= gate.min_f1, NOGO, f"F1 of {judged} on the {basis} basis"))
    if basis == AGREEMENT and model in EXPORTS and export:
        fidelity = number(export, (EXPORTS[model], "f1_vs_pytorch"), "export")
        checks.append(_check("export_fidelity", fidelity, gate.min_export_fidelity,
                             fidelity >= gate.min_export_fidelity, REVIEW,
                             f"F1 of {judged}'s tags against the PyTorch student's on the test split, which its "
                             "vocabulary was not trimmed to; without gold, what exporting cost is judged here"))
    checks.append(_stability(bench, f"{model}:{variant}", spreads))
    latency, ratio = figures[SUMMARY_P50], figures[SUMMARY_LATENCY_RATIO_INT8]
    checks += [
        {**_check("cpu_latency_p50_ms", latency, gate.go_latency_ms, latency < gate.go_latency_ms, REVIEW,
                  f"{judged} batch-1 p50 on a {bench.get('doc_tokens', '?')}-token document, "
                  f"{bench.get('threads', '?')} CPU threads"),
         "nogo_threshold": gate.nogo_latency_ms},
        _check("latency_ratio_vs_teacher_int8", ratio, gate.max_latency_ratio_vs_teacher_int8,
               ratio is not None and ratio <= gate.max_latency_ratio_vs_teacher_int8, REVIEW,
               f"{judged} p50 over the teacher's own int8 ONNX export ({TEACHER_INT8}), what quantising alone "
               "gives" if ratio is not None else f"bench measured no {TEACHER_INT8}: add --model "
               f"{TEACHER_INT8}=models/teacher_int8 to bench (nerdistill export-teacher writes it)"),
        _check("peak_memory_mb", figures[SUMMARY_RSS], gate.max_memory_mb, figures[SUMMARY_RSS] < gate.max_memory_mb,
               NOGO, f"peak resident memory of a fresh process loading and running {judged}"),
    ]
    return checks


def _stability(bench: dict, judged: str, spreads: dict[str, float]) -> dict:
    """Steady latency for the judged variant and the teacher references its ratios divide by."""
    references = _references(bench, judged)
    unsteady = [key for key in references if key in bench.get("unstable", [])]
    watched = [key for key in references if key in spreads]
    limit = bench.get("max_spread")
    if not watched:
        return _check("latency_stable", None, limit, False, REVIEW, f"bench recorded no p95/p50 spread for {judged} "
                      "nor the teacher: re-run bench (dvc repro bench)")
    worst = max(watched, key=spreads.__getitem__)
    named = ", ".join(f"{key} {spreads[key]:.2f}" if key in spreads else key for key in unsteady)
    source = (f"p95/p50 of {named} stayed above "
              f"bench.max_spread after {bench.get('retries', 0)} re-measurements (load average "
              f"{bench.get('load_avg', {}).get('after')}): the latency checks are not judged; re-run bench on a "
              "quiet machine" if unsteady else f"the most spread of {', '.join(watched)}: {worst}")
    return _check("latency_stable", spreads[worst], limit, not unsteady, REVIEW, source)


def _references(bench: dict, judged: str) -> tuple[str, str, str]:
    """The judged "model:variant" and the teacher variants its latency ratios divide by."""
    return judged, f"{lookup(bench, ('teacher',), 'bench')}:{FP32}", f"{TEACHER_INT8}:{ONNX}"


def _check(name: str, value: float, threshold: float, passed: bool, on_fail: str, source: str) -> dict:
    return {"name": name, "value": value, "threshold": threshold, "passed": passed, "on_fail": on_fail,
            "source": source}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--eval", type=Path, required=True, help="evaluate's metrics JSON")
    parser.add_argument("--bench", type=Path, required=True, help="bench's metrics JSON")
    parser.add_argument("--export", type=Path, help="export's metrics JSON (its fidelity, judged without gold)")
    parser.add_argument("--out", type=Path, required=True, help="gate.json")


def main(args: argparse.Namespace, params: Params) -> int:
    eval_metrics, bench_metrics = read_json(args.eval), read_json(args.bench)
    export_metrics = read_json(args.export) if args.export else None
    result = tracked_stage("gate", params, args.params, args.out,
                           lambda: run(params, eval_metrics, bench_metrics, export_metrics), last=True,
                           publish=lambda stage, result: publish(stage, result, export_metrics))
    print(gate_summary(result))
    return exit_code(result, params)


def publish(stage: StageRun, result: dict, export_metrics: dict | None) -> None:
    """The decision and figures on the execution's parent run; when the judged model is the int8 export
    (what ships), the figures linked to its MLflow model, registered with the champion alias on GO only."""
    figures = {key: result[key] for key in SUMMARY_KEYS}
    stage.set_parent_tag("gate", result["decision"])
    stage.log_summary(figures)
    if EXPORTS.get(result["model"]) != "int8":
        return
    digest = (export_metrics or {}).get("int8", {}).get(ONNX_DIGEST)
    if digest is None:
        log.warning("gate: export.json names no %s of the int8 export, so its MLflow model is not linked nor "
                    "registered; re-run export (dvc repro export)", ONNX_DIGEST)
        return
    stage.judge_model(digest, figures, promote=result["decision"] == GO)
