"""Measurement tools for the bench stage: workloads, pre-collated timing, int8 variants, peak memory.

What is timed is the model: `NerTagger.backend.predict` on windows tokenised and collated
beforehand, i.e. the encoder forward plus CRF Viterbi (students) or argmax (teacher), the path
evaluate tags with, minus tokenisation and window stitching. Peak memory is measured in a fresh
Python process per model variant (`python -m nerdistill.benchmark`), since a process's
high-water mark cannot be shared between models.
"""
from __future__ import annotations

import contextlib
import copy
import ctypes
import dataclasses
import gc
import itertools
import json
import logging
import math
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Hashable, Sequence, TypeVar

import torch
from torch import nn
from tqdm import tqdm

from nerdistill.modeling import parameter_count as module_parameters
from nerdistill.results import INT8
from nerdistill.tagger.core import NerTagger
from nerdistill.tagger.load import load_tagger

log = logging.getLogger(__name__)
K = TypeVar("K", bound=Hashable)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".onnx_data", ".pt")


@dataclasses.dataclass(frozen=True)
class Workloads:
    doc: list[str]  # words of a document of about bench.doc_tokens sub-tokens
    phrase: list[str]  # a phrase of the median length, in words
    batch: list[list[str]]  # bench.batch_size phrases


def build_workloads(sentences: Sequence[list[str]], tokenizer: object, doc_tokens: int, batch_size: int) -> Workloads:
    by_length = sorted(sentences, key=len)
    batch = [sentences[i % len(sentences)] for i in range(batch_size)]
    return Workloads(doc=build_document(sentences, tokenizer, doc_tokens), phrase=by_length[len(by_length) // 2],
                     batch=batch)


def build_document(sentences: Sequence[list[str]], tokenizer: object, doc_tokens: int) -> list[str]:
    """Phrases joined (cycling through them when the split is short) until `doc_tokens` sub-tokens,
    cut after the word that reaches the count, so the document is at most one word longer."""
    doc: list[str] = []
    total = 0
    for phrase in itertools.cycle(sentences):
        for word, length in zip(phrase, _word_lengths(tokenizer, phrase)):
            doc.append(word)
            total += length
            if total >= doc_tokens:
                return doc
    raise ValueError("no phrases to build a document from")


def subtoken_count(tokenizer: object, words: list[str]) -> int:
    return sum(_word_lengths(tokenizer, words))


def _word_lengths(tokenizer: object, words: list[str]) -> list[int]:
    encoding = tokenizer(list(words), is_split_into_words=True, add_special_tokens=False)
    lengths = [0] * len(words)
    for word in encoding.word_ids():
        lengths[word] += 1
    # A word the tokenizer turns into nothing still costs the unknown token the tagger gives it.
    return [max(1, length) for length in lengths]


class Timer:
    """One model variant with its workloads tokenised and collated once, as the tagger would."""

    def __init__(self, tagger: NerTagger, workloads: Workloads, batch_size: int) -> None:
        self.tagger = tagger
        self.batches = {"doc": self._collate([workloads.doc], 1),
                        "phrase": self._collate([workloads.phrase], 1),
                        "batch": self._collate(workloads.batch, batch_size)}

    def _collate(self, sentences: list[list[str]], batch_size: int) -> list[dict[str, torch.Tensor]]:
        windows = sorted((w for words in sentences for w in self.tagger.words.windows(words)),
                         key=lambda w: len(w.input_ids))
        return [self.tagger.collator([w.model_input() for w in windows[i:i + batch_size]])
                for i in range(0, len(windows), batch_size)]

    @torch.inference_mode()
    def seconds(self, workload: str) -> float:
        # predict() ends in .tolist(), which waits for the device: no explicit synchronise needed.
        start = time.perf_counter()
        for batch in self.batches[workload]:
            self.tagger.backend.predict(batch)
        return time.perf_counter() - start


def interleaved(timers: dict[K, Timer], workloads: Sequence[str], warmup: int, repeats: int, desc: str
                ) -> dict[K, dict[str, list[float]]]:
    """Seconds per (timer, workload): each round times every timer once, its order rotated each
    round, so drift in the machine's speed hits all of them alike; `warmup` rounds are discarded."""
    samples = {key: {workload: [] for workload in workloads} for key in timers}
    keys = list(timers)
    for round_no in tqdm(range(warmup + repeats), desc=desc, unit="round"):
        shift = round_no % len(keys)
        for key in keys[shift:] + keys[:shift]:
            for workload in workloads:
                seconds = timers[key].seconds(workload)
                if round_no >= warmup:
                    samples[key][workload].append(seconds)
    return samples


@dataclasses.dataclass(frozen=True)
class Measured:
    samples: dict[Hashable, dict[str, list[float]]]  # {key: {workload: seconds}}, of the round set kept
    noisy: dict[Hashable, float]  # the keys of that set still above max_spread: their p95/p50
    retries: int  # round sets measured again after the first


def steadiest(timers: dict[K, Timer], workloads: Sequence[str], warmup: int, repeats: int, max_spread: float,
              max_retries: int) -> Measured:
    """`interleaved` rounds, measured again while a timer's p95/p50 on `workloads[0]` exceeds `max_spread`
    (other processes took the cores), at most `max_retries` times; the steadiest set is kept.

    Every timer is measured again, not only the noisy ones, so that both sides of a ratio come from the
    same rounds. The set kept has the fewest noisy timers, then the lowest worst spread: a retry on a
    machine that got busier does not replace a cleaner set, and spread alone decides, never speed."""
    best: tuple[tuple[int, float], dict, dict] | None = None
    for retry in range(max_retries + 1):
        samples = interleaved(timers, workloads, warmup, repeats, desc=f"bench (retry {retry})" if retry else "bench")
        spreads = {key: spread(figures[workloads[0]]) for key, figures in samples.items()}
        noisy = {key: value for key, value in spreads.items() if value > max_spread}
        if best is None or (len(noisy), max(spreads.values())) < best[0]:
            best = (len(noisy), max(spreads.values())), samples, noisy
        for key, value in noisy.items():
            log.warning("%s: %s p95/p50 %.2f > max_spread %.2f (load average %s), %s", _label(key), workloads[0],
                        value, max_spread, load_average(), "measuring every variant again" if retry < max_retries
                        else "no retry left")
        if not noisy:
            break
    return Measured(best[1], best[2], retries=retry)


def _label(key: Hashable) -> str:
    return ":".join(map(str, key)) if isinstance(key, tuple) else str(key)


def spread(seconds: list[float]) -> float:
    """p95 / p50: near 1 on a quiet machine; far above when other processes took the cores for some rounds."""
    figures = percentiles_ms(seconds)
    return figures["p95_ms"] / figures["p50_ms"]


def load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages (runnable processes, this one included)."""
    return [round(value, 2) for value in os.getloadavg()]


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {"p50_ms": 1000 * statistics.median(ordered), "p95_ms": 1000 * _quantile(ordered, 0.95)}


def _quantile(ordered: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default method)."""
    position = q * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def quantized(tagger: NerTagger) -> NerTagger:
    """A copy of `tagger` whose nn.Linear layers are dynamically quantised to int8 (CPU only).

    torch.ao.quantization is deprecated in favour of torchao but still ships with torch; its
    deprecation warnings are silenced here, once, rather than repeated for every model.
    """
    variant = copy.copy(tagger)
    variant.backend = copy.copy(tagger.backend)
    variant.backend.model = _quantize(tagger.backend.model, inplace=False)
    return variant


def _quantize(model: nn.Module, inplace: bool) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=inplace)


def parameter_count(tagger: NerTagger) -> int | None:
    """Parameters of the PyTorch model; for an ONNX export, those of the student it was exported
    from, as its manifest records them (None for an export that does not)."""
    model = getattr(tagger.backend, "model", None)
    return tagger.backend.parameters if model is None else module_parameters(model)


def disk_bytes(path: str) -> int | None:
    """Bytes of the weight files of a model folder, or of a hub id's cached snapshot (None if absent)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            folder = Path(snapshot_download(path, local_files_only=True))
        except LocalEntryNotFoundError:
            return None
    return sum(f.stat().st_size for f in folder.iterdir() if f.name.endswith(WEIGHT_SUFFIXES))


def peak_memory(jobs: dict[tuple[str, str], tuple[str, tuple[int, int]]], workloads: Workloads, threads: int,
                batch_size: int) -> dict[tuple[str, str], dict[str, float]]:
    """{(model, variant): {"peak_rss_mb", "import_rss_mb", "model_rss_mb"}}, each from a fresh Python
    process given (folder, window): the whole process's peak, its peak once torch and transformers
    are imported, and the difference, what the model itself adds.

    A new interpreter (not a fork, which would start from this process's pages, nor a
    multiprocessing spawn, which re-imports the caller's main script) runs `python -m
    nerdistill.benchmark`. Two run at a time: the figures are per process, so neither moves.
    """
    request = {"workloads": dataclasses.asdict(workloads), "threads": threads, "batch_size": batch_size}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {key: pool.submit(_run_child, {**request, "path": path, "window": window, "variant": key[1]})
                   for key, (path, window) in jobs.items()}
        return {key: future.result() for key, future in futures.items()}


def _run_child(request: dict) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-m", "nerdistill.benchmark"], input=json.dumps(request),
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory measurement of {request['path']} ({request['variant']}) failed with exit "
                           f"status {done.returncode}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _measure(request: dict) -> dict[str, float]:
    """Child side: load the variant, tag the document and the batch, report the high-water marks.

    The int8 variant is quantised from the fp32 weights, in place; the fp32 copy is then freed and
    the high-water mark restarted, so its peak is what a process serving the int8 model holds, not
    the fp32 model it was made from (an int8 export loaded directly, as a service would)."""
    torch.set_num_threads(request["threads"])
    imported = _peak_rss_mb()
    workloads = Workloads(**request["workloads"])
    max_length, stride = request["window"]
    tagger = load_tagger(request["path"], device="cpu", max_length=max_length, stride=stride,
                         threads=request["threads"])
    if request["variant"] == INT8:
        _quantize(tagger.backend.model, inplace=True)
        gc.collect()
        _return_freed_memory()
        _restart_peak()
    tagger.tag_words([workloads.doc])
    tagger.tag_words(workloads.batch, batch_size=request["batch_size"])
    peak = _peak_rss_mb()
    return {"peak_rss_mb": peak, "import_rss_mb": imported, "model_rss_mb": peak - imported}


def _return_freed_memory() -> None:
    """glibc keeps freed heap pages resident until asked to hand them back."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _restart_peak() -> None:
    """Reset Linux's VmHWM to the current resident size (proc(5), clear_refs value 5)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_mb() -> float:
    """The process's resident-set high-water mark. Linux's VmHWM belongs to this process image only;
    ru_maxrss (the fallback elsewhere) may include the parent's size copied at fork."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


if __name__ == "__main__":
    print(json.dumps(_measure(json.loads(sys.stdin.read()))))
