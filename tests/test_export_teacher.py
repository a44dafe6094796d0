"""The teacher's own int8 export (`nerdistill export-teacher`): one self-contained folder that
`load_tagger` runs as the teacher runs (argmax at each word's first sub-token, its window from params),
tagging like the PyTorch teacher, and that evaluate and bench take as one more ONNX model."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from nerdistill import cli
from nerdistill.io import read_json
from nerdistill.model_folders import model_kind
from nerdistill.params_reader import params_from_dict
from nerdistill.tagger.load import load_tagger
from nerdistill.tagger.teacher import teacher_tagger
from nerdistill.text import entity_spans, split_words

WINDOW = {"max_length": 128, "stride": 32}  # short windows, so that long lines are stitched from several
SAMPLE_LINES = 120


@pytest.fixture(scope="module")
def exported(demo_teacher_dir, tmp_path_factory) -> tuple[Path, dict, float]:
    """(folder, metrics file, seconds) of `nerdistill export-teacher` on the demo teacher."""
    work = tmp_path_factory.mktemp("export_teacher")
    params = {"teacher": {"model_name": str(demo_teacher_dir), **WINDOW}}
    (work / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
        patch.delenv("DVC_EXP_NAME", raising=False)
        started = time.perf_counter()
        code = cli.main(["export-teacher", "--out", "models/teacher_int8", "--metrics", "export_teacher.json"])
        seconds = time.perf_counter() - started
    assert code == 0
    return work / "models" / "teacher_int8", json.loads((work / "export_teacher.json").read_text()), seconds


@pytest.fixture(scope="module")
def lines(corpus_path) -> list[list[str]]:
    text = corpus_path.read_text(encoding="utf-8").splitlines()[:SAMPLE_LINES]
    return [[word.text for word in split_words(line)] for line in text if line.strip()]


def entity_set(tag_lists: list[list[str]]) -> set[tuple[int, str, int, int]]:
    return {(row, *span) for row, tags in enumerate(tag_lists) for span in entity_spans(tags)}


def test_one_folder_with_graph_tokenizer_and_manifest(exported, demo_teacher_dir):
    folder, metrics, seconds = exported
    assert sorted(path.name for path in folder.parent.iterdir()) == ["teacher_int8"]  # no temp left
    files = {path.name for path in folder.iterdir()}
    assert {"model.onnx", "nerdistill_onnx.json", "tokenizer_config.json"} <= files
    assert "crf.json" not in files and not list(folder.glob("*.safetensors")) and not list(folder.glob(".*"))
    manifest = read_json(folder / "nerdistill_onnx.json")
    teacher = read_json(demo_teacher_dir / "config.json")
    assert manifest["exported"] == "teacher" and manifest["source"] == str(demo_teacher_dir)
    assert manifest["labels"] == [teacher["id2label"][str(i)] for i in range(len(teacher["id2label"]))]
    assert (manifest["max_length"], manifest["stride"]) == (WINDOW["max_length"], WINDOW["stride"])
    assert (manifest["quantization"], manifest["per_channel"], manifest["quantized_ops"]) == \
        ("dynamic-int8", True, ["MatMul", "Gather"])
    assert manifest["bytes"] == (folder / "model.onnx").stat().st_size == metrics["bytes"]
    assert manifest["parameters"] == metrics["parameters"] > 100_000
    assert model_kind(folder) == ("onnx", folder)  # evaluate and bench: a model, never the final student
    assert seconds < 300


def test_metrics_say_what_quantising_the_teacher_cost(exported):
    _, metrics, _ = exported
    assert set(metrics) == {"source", "labels", "max_length", "stride", "parameters", "bytes",
                            "max_abs_emission_diff", "fidelity_sentences", "reference_entities", "f1_vs_pytorch",
                            "sentences_identical"}
    assert metrics["reference_entities"] > 10 and metrics["f1_vs_pytorch"] >= 0.9
    assert 0 < metrics["max_abs_emission_diff"] < 1.0


def test_tags_like_the_pytorch_teacher(exported, demo_teacher_dir, lines):
    folder, _, _ = exported
    reference = teacher_tagger(params_from_dict({"teacher": {"model_name": str(demo_teacher_dir), **WINDOW}}).teacher,
                               "cpu")
    tagger = load_tagger(folder)
    assert tagger.kind == "onnx" and tagger.window == reference.window == (WINDOW["max_length"], WINDOW["stride"])
    assert tagger.labels == reference.labels  # IOB2, as NerTagger converts the teacher's IO labels
    expected, quantised = entity_set(reference.tag_words(lines)), entity_set(tagger.tag_words(lines))
    assert len(expected) > 100
    assert len(expected & quantised) / len(expected | quantised) >= 0.95


def test_long_lines_are_stitched_like_the_pytorch_teacher(exported, demo_teacher_dir, corpus_path):
    folder, _, _ = exported
    text = " ".join(corpus_path.read_text(encoding="utf-8").splitlines()[:15])
    reference = load_tagger(demo_teacher_dir, device="cpu", **WINDOW)([text])[0]
    tagger = load_tagger(folder)
    assert len(tagger.words.windows([word.text for word in split_words(text)])) > 2
    found = tagger([text])[0]
    spans = {(entity["start"], entity["end"], entity["type"]) for entity in found}
    expected = {(entity["start"], entity["end"], entity["type"]) for entity in reference}
    assert len(spans & expected) >= 0.9 * len(expected) > 10
    assert all(0 < entity["score"] <= 1 for entity in found)
