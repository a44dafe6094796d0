"""The evaluate stage end to end: the demo teacher, two students built from it and the final one's
int8 ONNX export, with a gold set."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from nerdistill.annotated import load_split
from nerdistill.export import export_student, load_student
from nerdistill.io import read_json
from nerdistill.modeling import build_student
from nerdistill.params import ExportParams
from nerdistill.teacher import load_teacher
from nerdistill.params_reader import params_from_dict
from nerdistill.stages import evaluate


def _student(folder: Path, teacher_dir: Path, data_dir: Path, layers: list[int]) -> Path:
    teacher, tokenizer = load_teacher(teacher_dir)
    id2label = {i: name for name, i in read_json(data_dir / "label2id.json").items()}
    student = build_student(teacher, id2label, layers, dropout=0.1, provenance={"run": "test"})
    student.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, demo_teacher_dir: Path, annotated_dir: Path) -> dict[str, str]:
    root = tmp_path_factory.mktemp("eval_students")
    final = _student(root / "final", demo_teacher_dir, annotated_dir, [2, 4])
    export_student(*load_student(final), root / "onnx_fp32", root / "onnx_int8", ExportParams(), str(final))
    # As dvc.yaml lists them: the exports after the final student, which stays the last student folder.
    return {"teacher": str(demo_teacher_dir),
            "distilled": str(_student(root / "distilled", demo_teacher_dir, annotated_dir, [1, 2, 4])),
            "final": str(final), "onnx_int8": str(root / "onnx_int8")}


@pytest.fixture(scope="module")
def gold_path(tmp_path_factory: pytest.TempPathFactory, annotated_dir: Path) -> Path:
    """The test split's own tags as an IOB1 CoNLL file, with a MISC entity (a type the students do
    not have) on the last word when it is outside any entity."""
    lines = ["-DOCSTART- O", ""]
    for record in load_split(annotated_dir / "test.jsonl"):
        iob2 = record["ner_tags"]
        tags = [tag.replace("B-", "I-") if i == 0 or tag[2:] != iob2[i - 1][2:] else tag for i, tag in enumerate(iob2)]
        if tags[-1] == "O":
            tags[-1] = "I-MISC"
        lines += [f"{word}\t{tag}" for word, tag in zip(record["tokens"], tags)] + [""]
    path = tmp_path_factory.mktemp("gold") / "gold.conll"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory, models: dict[str, str], annotated_dir: Path,
            gold_path: Path) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("eval_out")
    params = params_from_dict({"evaluate": {"gold_path": str(gold_path), "error_samples": 4, "batch_size": 8}})
    metrics = evaluate.run(params, data_dir=annotated_dir, models=models, per_class_csv=root / "per_class.csv",
                           confusion_png=root / "confusion.png", errors_path=root / "errors.jsonl")
    return root, metrics


def test_teacher_reproduces_its_own_annotation(outcome) -> None:
    _, metrics = outcome
    assert metrics["agreement"]["teacher"]["f1"] == pytest.approx(1.0)
    assert (metrics["teacher"], metrics["final"]) == ("teacher", "final")


def test_gold_scores_map_extra_types_to_o_and_drops_are_in_points(outcome) -> None:
    _, metrics = outcome
    # The gold set is the agreement reference plus MISC entities mapped to O: identical scores.
    for name in ("teacher", "distilled", "final", "onnx_int8"):
        assert metrics["gold"][name]["f1"] == pytest.approx(metrics["agreement"][name]["f1"])
        assert "MISC" not in metrics["gold"][name]["per_type"]
    for reference in ("agreement", "gold"):
        drops = metrics["f1_drop_points"][reference]
        assert set(drops) == {"distilled", "final", "onnx_int8"}
        expected = 100 * (metrics[reference]["teacher"]["f1"] - metrics[reference]["final"]["f1"])
        assert drops["final"] == pytest.approx(expected)


def test_the_int8_export_is_scored_like_the_student_it_came_from(outcome) -> None:
    _, metrics = outcome
    assert metrics["final"] == "final"  # an export listed after the final student is not the final student
    for reference in ("agreement", "gold"):
        final, export = metrics[reference]["final"], metrics[reference]["onnx_int8"]
        assert export["support"] == final["support"] > 20
        assert export["f1"] == pytest.approx(final["f1"], abs=0.02)


def test_per_class_csv_has_a_row_per_model_reference_and_type(outcome) -> None:
    root, metrics = outcome
    with (root / "per_class.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["model", "reference", "type", "precision", "recall", "f1", "support"]
    expected = {(model, reference, entity_type)
                for reference in ("agreement", "gold") for model, scores in metrics[reference].items()
                for entity_type in ["micro", *scores["per_type"]]}
    assert {(row["model"], row["reference"], row["type"]) for row in rows} == expected
    micro = next(r for r in rows if (r["model"], r["reference"], r["type"]) == ("final", "gold", "micro"))
    assert float(micro["f1"]) == pytest.approx(metrics["gold"]["final"]["f1"])


def test_error_samples_are_the_worst_sentences_with_both_taggings(outcome) -> None:
    root, metrics = outcome
    rows = [json.loads(line) for line in (root / "errors.jsonl").read_text(encoding="utf-8").splitlines()]
    assert 0 < len(rows) == metrics["error_samples"] <= 4
    counts = [row["word_errors"] for row in rows]
    assert counts == sorted(counts, reverse=True)
    for row in rows:
        assert row["reference"] == "gold" and row["model"] == "final"
        assert len(row["words"]) == len(row["reference_tags"]) == len(row["model_tags"]) == len(row["teacher_tags"])
        assert sum(r != p for r, p in zip(row["reference_tags"], row["model_tags"])) == row["word_errors"]


def test_confusion_png_is_written(outcome) -> None:
    root, _ = outcome
    assert (root / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_gold_only_agreement_is_reported(tmp_path: Path, models: dict[str, str], annotated_dir: Path) -> None:
    params = params_from_dict({"evaluate": {"error_samples": 2}})
    metrics = evaluate.run(params, data_dir=annotated_dir, models={k: models[k] for k in ("teacher", "final")},
                           per_class_csv=tmp_path / "c.csv", confusion_png=tmp_path / "c.png",
                           errors_path=tmp_path / "e.jsonl")
    assert "gold" not in metrics and set(metrics["f1_drop_points"]) == {"agreement"}
    assert all(json.loads(line)["reference"] == "agreement"
               for line in (tmp_path / "e.jsonl").read_text(encoding="utf-8").splitlines())


def test_models_without_a_student_are_refused(tmp_path: Path, models: dict[str, str], annotated_dir: Path) -> None:
    with pytest.raises(ValueError, match="at least one student folder"):
        evaluate.run(params_from_dict({}), data_dir=annotated_dir, models={"teacher": models["teacher"]},
                     per_class_csv=tmp_path / "c.csv", confusion_png=tmp_path / "c.png",
                     errors_path=tmp_path / "e.jsonl")
