"""Bench helpers, and the bench stage on the demo teacher and a student built from it (tiny repeats)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from transformers import AutoTokenizer

from nerdistill import benchmark as bm
from nerdistill.io import read_json
from nerdistill.model_folders import model_roles
from nerdistill.modeling import build_student
from nerdistill.params_reader import params_from_dict
from nerdistill.tagger import NerTagger
from nerdistill.teacher import load_teacher
from nerdistill.stages import bench, gate
from nerdistill.tagger import NerTagger


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory: pytest.TempPathFactory, demo_teacher_dir: Path, annotated_dir: Path) -> Path:
    teacher, tokenizer = load_teacher(demo_teacher_dir)
    id2label = {i: name for name, i in read_json(annotated_dir / "label2id.json").items()}
    student = build_student(teacher, id2label, [2, 4], dropout=0.1, provenance={"run": "test"})
    folder = tmp_path_factory.mktemp("bench_student")
    student.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory, demo_teacher_dir: Path, student_dir: Path,
            annotated_dir: Path) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("bench_out")
    params = params_from_dict({"bench": {"doc_tokens": 64, "warmup": 1, "repeats": 3, "batch_size": 4,
                                         "threads": 1, "int8": True}})
    models = {"teacher": str(demo_teacher_dir), "final": str(student_dir)}
    threads_before = torch.get_num_threads()
    metrics = bench.run(params, data_dir=annotated_dir, models=models, latency_png=root / "latency.png")
    return root, {**metrics, "threads_after_run": torch.get_num_threads(), "threads_before_run": threads_before}


def test_every_variant_has_positive_ordered_latencies_and_memory(outcome) -> None:
    _, metrics = outcome
    expected = {("teacher", "cpu_fp32"), ("teacher", "cpu_int8"), ("final", "cpu_fp32"), ("final", "cpu_int8")}
    if torch.cuda.is_available():
        expected |= {("teacher", "cuda_fp32"), ("final", "cuda_fp32")}
    found = {(name, variant) for name, model in metrics["models"].items() for variant in model["variants"]}
    assert found == expected
    for name, variant in found:
        figures = metrics["models"][name]["variants"][variant]
        for workload in ("doc", "phrase"):
            assert figures[f"{workload}_p95_ms"] >= figures[f"{workload}_p50_ms"] > 0
        assert figures["throughput_phrases_s"] > 0
        if variant.startswith("cpu"):
            assert figures["peak_rss_mb"] >= figures["import_rss_mb"] > 0


def test_int8_variants_report_their_quality(outcome) -> None:
    _, metrics = outcome
    for name in ("teacher", "final"):
        int8 = metrics["models"][name]["variants"]["cpu_int8"]
        assert 0.0 <= int8["f1_agreement"] <= 1.0
        assert int8["f1_drop_points"] == pytest.approx(100 * (1 - int8["f1_agreement"]))
    assert "f1_agreement" not in metrics["models"]["final"]["variants"]["cpu_fp32"]  # evaluate scores fp32


def test_headline_ratios_and_sizes(outcome) -> None:
    _, metrics = outcome
    teacher, final = metrics["models"]["teacher"], metrics["models"]["final"]
    assert final["parameters"] < teacher["parameters"]  # 2 of the teacher's 4 layers
    ratios = metrics["ratios"]
    assert ratios["parameters"] == pytest.approx(final["parameters"] / teacher["parameters"])
    assert ratios["disk_bytes"] == pytest.approx(final["disk_bytes"] / teacher["disk_bytes"])
    assert ratios["doc_p50_ms"] == pytest.approx(final["variants"]["cpu_fp32"]["doc_p50_ms"]
                                                 / teacher["variants"]["cpu_fp32"]["doc_p50_ms"])
    assert ratios["int8_doc_p50_ms"] == pytest.approx(final["variants"]["cpu_int8"]["doc_p50_ms"]
                                                      / teacher["variants"]["cpu_int8"]["doc_p50_ms"])


def test_document_and_settings_are_stated(outcome) -> None:
    root, metrics = outcome
    assert (metrics["teacher"], metrics["final"], metrics["threads"], metrics["repeats"]) == ("teacher", "final", 1, 3)
    assert 64 <= metrics["doc_subtokens"] and metrics["doc_words"] > 0 and metrics["phrase_words"] > 0
    assert "tokenisation" in metrics["timed"] and "excluded" in metrics["timed"]
    assert (root / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_restores_the_thread_count(outcome) -> None:
    _, metrics = outcome
    assert metrics["threads_after_run"] == metrics["threads_before_run"]


def test_document_reaches_the_count_at_a_word_boundary(demo_teacher_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(demo_teacher_dir)
    phrases = [["Jean", "Dupont", "habite", "à", "Marseille", "."], ["Le", "CHU", "de", "Lille", "recrute", "."]]
    doc = bm.build_document(phrases, tokenizer, 40)
    assert bm.subtoken_count(tokenizer, doc) >= 40 > bm.subtoken_count(tokenizer, doc[:-1])
    assert doc[:12] == phrases[0] + phrases[1]  # a short split is cycled through, in order


def test_workloads_use_the_median_phrase_and_a_full_batch(demo_teacher_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(demo_teacher_dir)
    phrases = [["a"] * 3, ["b"] * 9, ["c"] * 5]
    workloads = bm.build_workloads(phrases, tokenizer, doc_tokens=8, batch_size=5)
    assert workloads.phrase == ["c"] * 5
    assert workloads.batch == [phrases[0], phrases[1], phrases[2], phrases[0], phrases[1]]


def test_percentiles_match_numpy() -> None:
    seconds = [0.010, 0.030, 0.020, 0.050, 0.040, 0.100]
    figures = bm.percentiles_ms(seconds)
    assert figures["p50_ms"] == pytest.approx(1000 * np.percentile(seconds, 50))
    assert figures["p95_ms"] == pytest.approx(1000 * np.percentile(seconds, 95))


def test_quantized_copy_leaves_the_original_in_fp32(student_dir: Path) -> None:
    tagger = NerTagger.load(student_dir, device="cpu")
    int8 = bm.quantized(tagger)
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in int8.backend.model.modules())
    assert not any(type(m) is nn.Linear for m in int8.backend.model.modules())
    assert any(type(m) is nn.Linear for m in tagger.backend.model.modules())
    words = [["Jean", "Dupont", "habite", "à", "Marseille", "."]]
    assert len(int8.tag_words(words)[0]) == 6


def test_model_roles(student_dir: Path, demo_teacher_dir: Path) -> None:
    models = {"teacher": str(demo_teacher_dir), "distilled": str(student_dir), "final": str(student_dir)}
    assert model_roles(models) == ("teacher", "final")
    with pytest.raises(ValueError, match="at least one student"):
        model_roles({"teacher": str(demo_teacher_dir), "other": str(demo_teacher_dir)})


def test_disk_bytes_of_an_uncached_hub_id_is_unknown() -> None:
    assert bm.disk_bytes("nobody-here/no-such-model") is None


def test_gate_reads_the_bench_figures(outcome) -> None:
    _, metrics = outcome
    eval_metrics = {"agreement": {"final": {"f1": 1.0}}, "f1_drop_points": {"agreement": {"final": 0.0}}}
    result = gate.run(params_from_dict({"gate": {"go_latency_ms": 10_000, "nogo_latency_ms": 20_000,
                                                 "max_memory_mb": 100_000, "max_agreement_drop": 100.0,
                                                 "min_f1": 0.0}}),
                      eval_metrics, metrics)
    assert result["decision"] == "GO"
    chosen = metrics["models"]["final"]["variants"][result["variant"]]
    by_name = {check["name"]: check["value"] for check in result["checks"]}
    assert by_name["cpu_latency_p50_ms"] == chosen["doc_p50_ms"]
    assert by_name["peak_memory_mb"] == chosen["peak_rss_mb"]
    assert set(result["variants"]) == {"cpu_fp32", "cpu_int8"}


def test_restarted_peak_forgets_memory_already_freed():
    # What the int8 figure relies on: its fp32 source, once freed, is not in the peak.
    bm._restart_peak()  # earlier tests in this process may have peaked higher than what follows
    before = bm._peak_rss_mb()
    block = bytearray(300 * 2**20)
    block[:: 4096] = b"x" * len(block[:: 4096])  # touch every page so it is resident
    assert bm._peak_rss_mb() > before + 250
    del block
    bm._return_freed_memory()
    bm._restart_peak()
    assert bm._peak_rss_mb() < before + 100
