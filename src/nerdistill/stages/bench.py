"""Bench stage: latency, throughput, peak memory and size of the teacher and every model.

All variants run in one interleaved loop on the same inputs: each round times every variant
once (its order rotated each round), so drift in the machine's speed hits all of them alike.
`bench.warmup` rounds are discarded, `bench.repeats` are kept. Variants: `cpu_fp32` for every
model, `cpu_int8` (dynamic int8 nn.Linear) for the teacher and the final student when
`bench.int8`, `cuda_fp32` when a GPU is present, `cpu_onnx` for an ONNX export folder (the
pipeline's fp32 and int8 exports, what ships). The int8 and ONNX variants also get their F1
against the teacher's test-split tags here, so no speed is reported without its quality (evaluate
scores the ONNX exports too, on gold as well). See nerdistill.benchmark for what is timed and how
memory is measured.

Headline `ratios`: final student / teacher, fp32 on CPU, and int8 / int8 from the same run; and
for each ONNX export (and the final student's int8 variant) its latency, size and memory over the
teacher's fp32 figures (key names: `results.vs_teacher_fp32`).

Noise: a variant whose document p95/p50 (`p95_over_p50`) exceeds `bench.max_spread` had its rounds taken
by other processes; every variant is then measured again, up to `bench.max_retries` times, the steadiest
round set kept (`benchmark.steadiest`), and whatever is still above the bound is listed in `unstable`.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

# libgomp, torch's OpenMP runtime, reads OMP_WAIT_POLICY once, when `import torch` loads it. By default each
# thread spins between parallel regions; with bench.threads on cores that other processes also use, spinning
# threads take the time slices the working ones need at every region's barrier: a 2-layer demo student's
# document p50 measured 60-390 ms (p95 up to 420) instead of 11-16 with PASSIVE, 2 threads, load average 6-7.
# PASSIVE waits in the kernel (onnxruntime's sessions already do: tagger/onnx.py). A value set by the caller
# is kept; bench.json reports the one in effect.
OMP_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY", "default (torch already loaded)" if "torch" in sys.modules
                                 else "PASSIVE")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from nerdistill import benchmark as bm  # noqa: E402
from nerdistill.annotated import AnnotatedDir  # noqa: E402
from nerdistill.metrics import entity_scores, restrict_types  # noqa: E402
from nerdistill.params import BenchParams, Params, TeacherParams  # noqa: E402
from nerdistill.model_folders import add_model_arguments, model_roles, named_models  # noqa: E402
from nerdistill.plots import plot_latency  # noqa: E402
from nerdistill.tracking import tracked_stage  # noqa: E402
from nerdistill.results import CUDA, FP32, INT8, ONNX, SPREAD, natural_variant, vs_teacher_fp32  # noqa: E402
from nerdistill.tagger.core import NerTagger  # noqa: E402
from nerdistill.tagger.load import compared_tagger  # noqa: E402

log = logging.getLogger(__name__)

WORKLOADS = ("doc", "phrase", "batch")
Key = tuple[str, str]  # (model name, variant)


def run(params: Params, data_dir: Path, models: dict[str, str], latency_png: Path) -> dict:
    if OMP_WAIT_POLICY != "PASSIVE":
        log.warning("OMP_WAIT_POLICY is %s: on busy cores PyTorch latencies may come out 10x too slow; set "
                    "OMP_WAIT_POLICY=PASSIVE before the process starts", OMP_WAIT_POLICY)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(params.bench.threads)
    try:
        return _bench(params.bench, params.teacher, Path(data_dir), models, latency_png)
    finally:
        torch.set_num_threads(previous_threads)


def _bench(bench: BenchParams, teacher_params: TeacherParams, data_dir: Path, models: dict[str, str],
           latency_png: Path) -> dict:
    load_before = bm.load_average()
    annotated = AnnotatedDir(data_dir)
    teacher, final = model_roles(models)
    test = annotated.split("test")
    sentences, reference = [r["tokens"] for r in test], [r["ner_tags"] for r in test]
    kept_types = annotated.kept_types()

    taggers = {name: compared_tagger(path, teacher_params, "cpu", bench.threads) for name, path in models.items()}
    variants = _variants(bench, teacher_params, models, taggers, teacher, final)
    tokenizer = taggers[teacher].words.tokenizer
    workloads = bm.build_workloads(sentences, tokenizer, bench.doc_tokens, bench.batch_size)
    memory = bm.peak_memory({key: (models[key[0]], taggers[key[0]].window) for key in variants if key[1] != CUDA},
                            workloads, bench.threads, bench.batch_size)
    timers = {key: bm.Timer(tagger, workloads, bench.batch_size) for key, tagger in variants.items()}
    measured = bm.steadiest(timers, WORKLOADS, bench.warmup, bench.repeats, bench.max_spread, bench.max_retries)
    load_after = bm.load_average()

    results: dict = {name: {"kind": tagger.kind, "parameters": bm.parameter_count(tagger),
                            "disk_bytes": bm.disk_bytes(models[name]), "variants": {}}
                     for name, tagger in taggers.items()}
    for key, tagger in variants.items():
        figures = _figures(measured.samples[key], bench.batch_size) | memory.get(key, {})
        if key[1] in (INT8, ONNX):
            figures |= _quality(tagger, sentences, reference, kept_types, bench.batch_size)
        results[key[0]]["variants"][key[1]] = figures
    metrics = {
        "teacher": teacher, "final": final, "threads": bench.threads, "omp_wait_policy": OMP_WAIT_POLICY,
        "load_avg": {"before": load_before, "after": load_after}, "max_spread": bench.max_spread,
        "retries": measured.retries, "unstable": sorted(f"{name}:{variant}" for name, variant in measured.noisy),
        "warmup": bench.warmup, "repeats": bench.repeats, "batch_size": bench.batch_size,
        "doc_tokens": bench.doc_tokens,
        "doc_subtokens": bm.subtoken_count(tokenizer, workloads.doc), "doc_words": len(workloads.doc),
        "phrase_words": len(workloads.phrase),
        "timed": "model only: encoder forward + CRF Viterbi (students) or argmax (teacher) on windows "
                 "tokenised and collated beforehand; tokenisation and stitching excluded",
        "memory": "peak_rss_mb: resident high-water mark of a fresh Python process that loads the variant "
                  "and tags the document and the batch (int8: from the moment its fp32 source is freed, as a "
                  "process serving the int8 model); import_rss_mb: the same once torch and transformers are "
                  "imported; model_rss_mb: the difference (the model, its activations and the library code "
                  "transformers imports lazily while loading, some tens of MB)",
        "quality": "f1_agreement: strict IOB2 F1 against the teacher's test-split tags; "
                   "f1_drop_points = 100 * (1 - f1_agreement)",
        "size": "parameters: PyTorch parameter count; for an ONNX export, that of the (vocabulary-trimmed) "
                "student it was exported from, as its nerdistill_onnx.json records it (null where it does "
                "not); disk_bytes: the weight files (.safetensors, .onnx, ...), tokenizer files excluded",
        "noise": "p95_over_p50: document p95 / p50; above max_spread, every variant was measured again (up to "
                 "bench.max_retries times, `retries`) and the steadiest round set kept; unstable: the variants "
                 "still above it, figures to flag, not judge; load_avg: 1/5/15-min load averages as the stage "
                 "starts and once timing ends (bench's own threads included)",
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "models": results, "ratios": _ratios(results, teacher, final),
    }
    plot_latency(results, latency_png, metrics)
    if metrics["unstable"]:
        log.warning("bench: %s still above p95/p50 %.2f after %d retries (load average %s before, %s after): "
                    "flagged unstable", ", ".join(metrics["unstable"]), bench.max_spread, measured.retries,
                    load_before, load_after)
    log.info("bench ratios %s / %s: %s", final, teacher, metrics["ratios"])
    return metrics


def _variants(bench: BenchParams, teacher_params: TeacherParams, models: dict[str, str],
              taggers: dict[str, NerTagger], teacher: str, final: str) -> dict[Key, NerTagger]:
    variants = {(name, natural_variant(tagger.kind)): tagger for name, tagger in taggers.items()}
    if bench.int8:
        variants |= {(name, INT8): bm.quantized(taggers[name]) for name in (teacher, final)}
    if torch.cuda.is_available():
        variants |= {(name, CUDA): compared_tagger(path, teacher_params, "cuda") for name, path in models.items()
                     if taggers[name].kind != "onnx"}
    return variants


def _figures(samples: dict[str, list[float]], batch_size: int) -> dict[str, float]:
    doc, phrase, batch = (bm.percentiles_ms(samples[workload]) for workload in WORKLOADS)
    return {"doc_p50_ms": doc["p50_ms"], "doc_p95_ms": doc["p95_ms"], SPREAD: doc["p95_ms"] / doc["p50_ms"],
            "phrase_p50_ms": phrase["p50_ms"],
            "phrase_p95_ms": phrase["p95_ms"], "batch_p50_ms": batch["p50_ms"],
            "throughput_phrases_s": 1000 * batch_size / batch["p50_ms"]}


def _quality(tagger: NerTagger, sentences: list[list[str]], reference: list[list[str]], kept_types: set[str],
             batch_size: int) -> dict[str, float]:
    predicted = [restrict_types(tags, kept_types) for tags in tagger.tag_words(sentences, batch_size=batch_size)]
    f1 = entity_scores(reference, predicted)["f1"]
    return {"f1_agreement": f1, "f1_drop_points": 100 * (1 - f1)}


def _ratios(results: dict, teacher: str, final: str) -> dict[str, float]:
    """Figures over the teacher's; one missing on either side (a hub teacher not cached) is left out."""
    student, base = results[final], results[teacher]
    base_fp32 = base["variants"][FP32]
    pairs = {key: (student[key], base[key]) for key in ("parameters", "disk_bytes")}
    for key in ("doc_p50_ms", "phrase_p50_ms", "throughput_phrases_s", "peak_rss_mb", "model_rss_mb"):
        pairs[key] = student["variants"][FP32][key], base_fp32[key]
    if INT8 in student["variants"]:
        int8_doc = student["variants"][INT8]["doc_p50_ms"]
        pairs["int8_doc_p50_ms"] = int8_doc, base["variants"][INT8]["doc_p50_ms"]
        pairs[vs_teacher_fp32("final_int8", "doc_p50_ms")] = int8_doc, base_fp32["doc_p50_ms"]
    for name, model in results.items():
        if ONNX in model["variants"]:
            figures = model["variants"][ONNX]
            pairs[vs_teacher_fp32(name, "doc_p50_ms")] = figures["doc_p50_ms"], base_fp32["doc_p50_ms"]
            pairs[vs_teacher_fp32(name, "peak_rss_mb")] = figures["peak_rss_mb"], base_fp32["peak_rss_mb"]
            pairs[vs_teacher_fp32(name, "disk_bytes")] = model["disk_bytes"], base["disk_bytes"]
    return {key: ours / theirs for key, (ours, theirs) in pairs.items() if ours is not None and theirs}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, "time")
    parser.add_argument("--plot", type=Path, required=True, help="latency and size bars of every variant (PNG)")


def main(args: argparse.Namespace, params: Params) -> int:
    models = named_models(params.teacher.model_name, args.model)
    tracked_stage("bench", params, args.params, args.metrics,
                  lambda: run(params, data_dir=args.data, models=models, latency_png=args.plot),
                  artifacts=(args.plot,))
    return 0
