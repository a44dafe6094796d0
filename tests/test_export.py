"""ONNX export: the exported graph (fp32 and dynamic int8) tags like the PyTorch student, pruned head
counts and FFN sizes survive, the folder is self-contained, and every model kind gives the same output format."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from nerdistill.annotated import load_split
from nerdistill.export import export_onnx
from nerdistill.io import InputError, read_json
from nerdistill.modeling import FORBIDDEN, build_student, save_student
from nerdistill.tagger import NerTagger
from nerdistill.teacher import load_teacher
from nerdistill.pruning import prune_ffn, prune_heads
from nerdistill.tagger import NerTagger
from nerdistill.text import entity_spans, split_words

HEADS_KEPT = {0: [0, 2], 1: [1], 2: [0, 1, 2, 3], 3: [1, 3]}  # uneven on purpose: 2, 1, 4, 2 heads
NEURONS_KEPT = {1: list(range(200)), 3: list(range(64, 256))}  # FFN sizes 256, 200, 256, 192


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory, demo_teacher_dir, annotated_dir) -> Path:
    """A pruned student that tags like the demo teacher: all four teacher layers, the teacher's
    classifier row of type X as both B-X and I-X emissions, the annotated transition prior."""
    teacher, tokenizer = load_teacher(demo_teacher_dir)
    id2label = {i: label for label, i in read_json(annotated_dir / "label2id.json").items()}
    student = build_student(teacher, id2label, [1, 2, 3, 4], dropout=0.1, provenance={})
    teacher_ids = {label: int(i) for i, label in teacher.config.id2label.items()}
    with torch.no_grad():
        for i, label in id2label.items():
            source = teacher_ids["O" if label == "O" else f"I-{label[2:]}"]
            student.emissions.weight[i] = teacher.classifier.weight[source]
            student.emissions.bias[i] = teacher.classifier.bias[source]
    student.config.head_counts = prune_heads(student, HEADS_KEPT)
    student.config.ffn_sizes = prune_ffn(student, NEURONS_KEPT)
    out = tmp_path_factory.mktemp("export") / "student"
    save_student(student, tokenizer, out)
    return out


@pytest.fixture(scope="module")
def fp32_dir(student_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("export") / "onnx_fp32"
    return out, export_onnx(student_dir, out, int8=False)


@pytest.fixture(scope="module")
def int8_dir(student_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("export") / "onnx_int8"
    return out, export_onnx(student_dir, out, int8=True)


@pytest.fixture(scope="module")
def sentences(annotated_dir) -> list[list[str]]:
    """Every annotated phrase (train, val and test: 300), so that agreement rates rest on ~1,000 entities."""
    return [record["tokens"] for split in ("train", "val", "test")
            for record in load_split(annotated_dir / f"{split}.jsonl")]


def entity_set(tag_lists: list[list[str]]) -> set[tuple[int, str, int, int]]:
    return {(row, *span) for row, tags in enumerate(tag_lists) for span in entity_spans(tags)}


def test_fp32_export_tags_exactly_like_pytorch(student_dir, fp32_dir, annotated_dir):
    out, summary = fp32_dir
    assert summary["quantization"] == "none" and summary["max_abs_emission_diff"] < 1e-4
    manifest = read_json(out / "nerdistill_onnx.json")
    assert manifest["head_counts"] == [2, 1, 4, 2] and manifest["ffn_sizes"] == [256, 200, 256, 192]
    files = {path.name for path in out.iterdir()}
    assert {"model.onnx", "crf.json", "nerdistill_onnx.json", "tokenizer_config.json"} <= files
    assert not list(out.glob("*.pkl")) and not list(out.glob("*.bin"))

    test_split = [record["tokens"] for record in load_split(annotated_dir / "test.jsonl")]
    torch_tags = NerTagger.load(student_dir, device="cpu").tag_words(test_split, batch_size=8)
    onnx_tags = NerTagger.load(out).tag_words(test_split, batch_size=8)
    assert len(entity_set(torch_tags)) > 40, "the student should find entities for the comparison to mean anything"
    assert onnx_tags == torch_tags


def test_int8_export_keeps_entities(student_dir, int8_dir, fp32_dir, sentences, caplog):
    out, summary = int8_dir
    assert summary["quantization"] == "dynamic-int8"
    assert summary["bytes"] < fp32_dir[1]["bytes"]
    reference = entity_set(NerTagger.load(student_dir, device="cpu").tag_words(sentences))
    quantised = entity_set(NerTagger.load(out).tag_words(sentences))
    agreement = len(reference & quantised) / len(reference)
    logging.getLogger(__name__).info("int8 entity agreement with PyTorch on the annotated phrases: %.4f (%d entities)",
                                     agreement, len(reference))
    assert agreement >= 0.99


def test_onnx_windows_long_lines_like_pytorch(student_dir, fp32_dir, corpus_path):
    text = " ".join(corpus_path.read_text(encoding="utf-8").splitlines()[:15])
    windows = {"max_length": 40, "stride": 12, "batch_size": 4}
    torch_entities = NerTagger.load(student_dir, device="cpu", **windows)([text])[0]
    onnx_tagger = NerTagger.load(fp32_dir[0], **windows)
    assert len(onnx_tagger.words.windows([w.text for w in split_words(text)])) > 5
    onnx_entities = onnx_tagger([text])[0]
    assert [(e["start"], e["end"], e["type"]) for e in onnx_entities] == \
        [(e["start"], e["end"], e["type"]) for e in torch_entities]
    assert [e["score"] for e in onnx_entities] == pytest.approx([e["score"] for e in torch_entities], abs=1e-3)


def test_crf_file_holds_the_constrained_decoding_weights(fp32_dir):
    crf = read_json(fp32_dir[0] / "crf.json")
    labels = crf["labels"]
    assert labels[0] == "O" and len(crf["transitions"]) == len(labels)
    for label, score in zip(labels, crf["start"]):
        assert (score == FORBIDDEN) == label.startswith("I-")
    o_to_i = [crf["transitions"][0][j] for j, label in enumerate(labels) if label.startswith("I-")]
    assert o_to_i and all(score == FORBIDDEN for score in o_to_i)


def test_every_model_kind_gives_the_same_output_format(student_dir, fp32_dir, demo_teacher_dir):
    text = "Le docteur Jean Martin a reçu Mme Durand à l'hôpital Saint-Louis de Paris."
    outputs = {path.name if isinstance(path, Path) else path: NerTagger.load(path, device="cpu")([text])[0]
               for path in (student_dir, fp32_dir[0], demo_teacher_dir)}
    for name, entities in outputs.items():
        assert entities, f"{name} found nothing"
        for entity in entities:
            assert set(entity) == {"text", "type", "start", "end", "token_start", "token_end", "score"}, name
            assert text[entity["start"]:entity["end"]] == entity["text"]
            assert isinstance(entity["score"], float) and 0 < entity["score"] <= 1
    json.dumps(outputs)  # JSON-serialisable as predict writes it


def test_export_refuses_what_is_not_a_student(demo_teacher_dir, tmp_path):
    with pytest.raises(InputError, match="export takes a CRF student folder"):
        export_onnx(demo_teacher_dir, tmp_path / "out", int8=False)
    with pytest.raises(InputError, match="no such model folder"):
        export_onnx(tmp_path / "absent", tmp_path / "out", int8=False)
    assert not (tmp_path / "out").exists()
