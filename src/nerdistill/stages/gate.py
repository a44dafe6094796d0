"""GO / REVIEW / NO-GO for the final student, from the evaluate and bench metrics.

Checks, each on the same CPU variant of the final student (fp32, or dynamic int8 when bench
measured it):
- quality, on the gold basis when evaluate scored a gold set: the F1 drop, teacher - student in
  points, <= gate.max_f1_drop, else NO-GO. Without gold only agreement exists (F1 against the
  teacher's own tags), which counts the teacher's mistakes as the student's: a student may
  disagree and be right. So the agreement drop, 100 x (1 - agreement F1), has its own bound,
  gate.max_agreement_drop, and past it the verdict is REVIEW (score a gold set to decide), never
  a gold threshold applied to agreement. The int8 variant has only an agreement F1 (bench
  scores it on the test split), so it is a candidate only on the agreement basis.
- a floor: the student's F1 on that basis >= gate.min_f1, else NO-GO whatever the drop (a
  useless teacher makes any drop look small).
- CPU p50 batch-1 latency on the ~bench.doc_tokens document < gate.go_latency_ms.
- peak resident memory of the process that loaded and ran the variant < gate.max_memory_mb.

Decision: NO-GO when a check whose failure is NO-GO fails (gold drop, floor, memory) or the
latency exceeds gate.nogo_latency_ms; GO when every check passes; otherwise REVIEW (the
agreement drop past its bound, or a latency in [go_latency_ms, nogo_latency_ms], a band the
seeds' criteria neither accept nor reject), so a person decides. Each check records what its
failure means (`on_fail`). Every candidate variant is judged and the best decision wins (ties:
lower latency), so a fast int8 that loses too much F1 never hides a good fp32.
"""
from __future__ import annotations

import logging

from nerdistill.params import Params
from nerdistill.results import AGREEMENT, FP32, GO, GOLD, INT8, NOGO, REVIEW, drop_path, f1_path, lookup, number, \
    variant_path

log = logging.getLogger(__name__)

_RANK = {GO: 0, REVIEW: 1, NOGO: 2}


def run(params: Params, eval_metrics: dict, bench_metrics: dict) -> dict:
    basis = GOLD if eval_metrics.get(GOLD) else AGREEMENT
    final = lookup(bench_metrics, ("final",), "bench")
    measured = lookup(bench_metrics, ("models", final, "variants"), "bench")
    candidates = [FP32] + ([INT8] if basis == AGREEMENT and INT8 in measured else [])
    verdicts = {variant: _judge(params, eval_metrics, bench_metrics, basis, final, variant)
                for variant in candidates}
    best = min(verdicts, key=lambda v: (_RANK[verdicts[v]["decision"]], verdicts[v]["latency_ms"]))
    result = {"decision": verdicts[best]["decision"], "basis": basis, "model": final, "variant": best,
              "checks": verdicts[best]["checks"],
              "variants": {variant: verdict["decision"] for variant, verdict in verdicts.items()}}
    log.info("gate: %s (%s basis, %s %s)", result["decision"], basis, final, best)
    return result


def exit_code(result: dict, params: Params) -> int:
    """Process exit status for the gate command: 1 on NO-GO when gate.fail_on_nogo, else 0."""
    return 1 if result["decision"] == NOGO and params.gate.fail_on_nogo else 0


def _judge(params: Params, eval_metrics: dict, bench_metrics: dict, basis: str, final: str,
           variant: str) -> dict:
    gate = params.gate
    latency = number(bench_metrics, variant_path(variant, "doc_p50_ms", final), "bench")
    memory = number(bench_metrics, variant_path(variant, "peak_rss_mb", final), "bench")
    # Evaluate scores the fp32 students; the other variants are scored (on agreement) by bench.
    if variant == FP32:
        f1 = number(eval_metrics, f1_path(basis, final), "eval")
        drop = number(eval_metrics, drop_path(basis, final), "eval")
    else:
        f1 = number(bench_metrics, variant_path(variant, "f1_agreement", final), "bench")
        drop = number(bench_metrics, variant_path(variant, "f1_drop_points", final), "bench")
    if basis == GOLD:
        quality = _check("f1_drop_points", drop, gate.max_f1_drop, drop <= gate.max_f1_drop, NOGO,
                         f"teacher - {final} ({variant}) F1 on the gold set, in points")
    else:
        quality = _check("agreement_drop_points", drop, gate.max_agreement_drop, drop <= gate.max_agreement_drop,
                         REVIEW, f"100 x (1 - F1 of {final} ({variant}) against the teacher's own tags); no gold "
                         "set, so disagreement may be the teacher's error: set evaluate.gold_path to decide")
    checks = [
        quality,
        _check("f1", f1, gate.min_f1, f1 >= gate.min_f1, NOGO, f"F1 of {final} ({variant}) on the {basis} basis"),
        {**_check("cpu_latency_p50_ms", latency, gate.go_latency_ms, latency < gate.go_latency_ms, REVIEW,
                  f"{final} ({variant}) batch-1 p50 on a {bench_metrics.get('doc_tokens', '?')}-token "
                  f"document, {bench_metrics.get('threads', '?')} CPU threads"),
         "nogo_threshold": gate.nogo_latency_ms},
        _check("peak_memory_mb", memory, gate.max_memory_mb, memory < gate.max_memory_mb, NOGO,
               f"peak resident memory of a fresh process loading and running {final} ({variant})"),
    ]
    failed = [check for check in checks if not check["passed"]]
    nogo = any(check["on_fail"] == NOGO for check in failed) or latency > gate.nogo_latency_ms
    decision = NOGO if nogo else REVIEW if failed else GO
    return {"decision": decision, "checks": checks, "latency_ms": latency}


def _check(name: str, value: float, threshold: float, passed: bool, on_fail: str, source: str) -> dict:
    return {"name": name, "value": value, "threshold": threshold, "passed": passed, "on_fail": on_fail,
            "source": source}
