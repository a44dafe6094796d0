"""Broken inputs say so in one line: model folders with missing tokenizer files, another model's tokenizer or
weights cut short (teacher, student, ONNX export, a checkpoint to resume), a missing local model taken for a
hub id, a bare str given to a tagger, an empty params file, a sweep's dry run with an invalid point."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
import torch
import yaml
from onnx import TensorProto, helper
from transformers import AutoModelForTokenClassification, AutoTokenizer

from nerdistill import cli
from nerdistill.io import InputError
from nerdistill.model_folders import ONNX_MANIFEST, check_weights, looks_local, model_kind
from nerdistill.modeling import build_student, save_student
from nerdistill.params import ParamsError
from nerdistill.params_reader import load_params, params_from_dict
from nerdistill.stages import annotate
from nerdistill.tagger.core import NerTagger, WindowOutput
from nerdistill.tagger.load import load_tagger
from nerdistill.teacher import load_teacher

REPO = Path(__file__).resolve().parents[1]
STUDENT_LABELS = ("O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER")


def _copy(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to)
    return to


def _truncate(path: Path) -> None:
    """Cut a file to half its size, as an interrupted copy or download leaves it."""
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


def _one_error(caplog: pytest.LogCaptureFixture) -> str:
    errors = [record for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1 and "Traceback" not in caplog.text
    return errors[0].getMessage()


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory: pytest.TempPathFactory, random_teacher_dir: Path) -> Path:
    """A 2-layer student of the random teacher, saved as distill saves one."""
    teacher, tokenizer = load_teacher(random_teacher_dir)
    student = build_student(teacher, dict(enumerate(STUDENT_LABELS)), [1, 2], dropout=0.1, provenance={})
    out = tmp_path_factory.mktemp("broken") / "student"
    save_student(student, tokenizer, out)
    return out


# --- teachers ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra_rows", [300, -10])
def test_teacher_with_another_models_tokenizer_is_refused(tmp_path, random_teacher_dir, extra_rows):
    teacher = _copy(random_teacher_dir, tmp_path / "teacher")
    pieces = len(AutoTokenizer.from_pretrained(teacher))
    model = AutoModelForTokenClassification.from_pretrained(teacher)
    model.resize_token_embeddings(pieces + extra_rows)
    model.save_pretrained(teacher)
    with pytest.raises(InputError, match=rf"{teacher}: the tokenizer has {pieces} pieces but the model's "
                                         rf"embedding table {pieces + extra_rows} rows"):
        load_teacher(teacher)


def test_annotate_with_a_teacher_missing_its_tokenizer_writes_nothing(tmp_path, random_teacher_dir):
    teacher = _copy(random_teacher_dir, tmp_path / "teacher")
    for path in teacher.glob("tokenizer*"):
        path.unlink()
    lines = (REPO / "data" / "raw" / "corpus.txt").read_text(encoding="utf-8").splitlines(keepends=True)[:30]
    (tmp_path / "corpus.txt").write_text("".join(lines), encoding="utf-8")
    params = params_from_dict({"teacher": {"model_name": str(teacher)}})
    # AutoTokenizer alone would hand back a tokenizer of CamemBERT's 8 special tokens here.
    with pytest.raises(InputError, match=rf"teacher.model_name = .*{teacher}: missing .*tokenizer\.json"):
        annotate.run(params, corpus=tmp_path / "corpus.txt", out_dir=tmp_path / "annotated")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["corpus.txt", "teacher"]


def test_teacher_weights_cut_short_stop_predict_with_exit_2(tmp_path, caplog, random_teacher_dir):
    teacher = _copy(random_teacher_dir, tmp_path / "teacher")
    _truncate(teacher / "model.safetensors")
    (tmp_path / "in.txt").write_text("Marie habite à Lyon.\n")
    out = tmp_path / "out.jsonl"
    assert cli.main(["predict", "--model", str(teacher), "--input", str(tmp_path / "in.txt"),
                     "--output", str(out)]) == 2
    message = _one_error(caplog)
    assert f"{teacher}: model.safetensors is truncated or unreadable" in message
    assert not out.exists()


# --- students, checkpoints and exports ---------------------------------------------------------------

def test_truncated_student_weights_stop_predict_with_exit_2(tmp_path, caplog, student_dir):
    student = _copy(student_dir, tmp_path / "student")
    _truncate(student / "model.safetensors")
    with pytest.raises(InputError, match=rf"{student}: model\.safetensors is truncated"):
        load_tagger(student)
    (tmp_path / "in.txt").write_text("Marie habite à Lyon.\n")
    out = tmp_path / "out.jsonl"
    assert cli.main(["predict", "--model", str(student), "--input", str(tmp_path / "in.txt"),
                     "--output", str(out)]) == 2
    assert "model.safetensors is truncated" in _one_error(caplog)
    assert not out.exists()


def test_student_with_another_models_tokenizer_is_refused(tmp_path, student_dir):
    student = _copy(student_dir, tmp_path / "student")
    tokenizer = AutoTokenizer.from_pretrained(student)
    rows = len(tokenizer)
    tokenizer.add_tokens([f"piece{i}" for i in range(50)])  # ids past the student's embedding table
    tokenizer.save_pretrained(student)
    with pytest.raises(InputError, match=rf"{student}: the tokenizer has {rows + 50} pieces but the model's "
                                         rf"embedding table {rows} rows"):
        load_tagger(student)


def test_a_checkpoint_to_resume_is_checked_whole(tmp_path, student_dir):
    checkpoint = tmp_path / "checkpoints" / "checkpoint-3"
    checkpoint.mkdir(parents=True)
    shutil.copy(student_dir / "model.safetensors", checkpoint)
    check_weights(checkpoint, "delete it")  # whole: nothing to say
    _truncate(checkpoint / "model.safetensors")
    with pytest.raises(InputError, match=r"checkpoint-3: model\.safetensors is truncated or unreadable .*; delete it"):
        check_weights(checkpoint, "delete it")


def _onnx_export_folder(folder: Path, tokenizer_dir: Path, vocab_size: int) -> Path:
    """A teacher export's folder (manifest, tokenizer, model.onnx) around a one-node graph."""
    shutil.copytree(tokenizer_dir, folder)
    graph = helper.make_graph([helper.make_node("Identity", ["input_ids"], ["emissions"])], "g",
                              [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B", "T"])],
                              [helper.make_tensor_value_info("emissions", TensorProto.INT64, ["B", "T"])])
    onnx.save(helper.make_model(graph), folder / "model.onnx")
    manifest = {"exported": "teacher", "model_file": "model.onnx", "labels": ["O", "I-PER"], "max_positions": 512,
                "max_length": 128, "stride": 32, "vocab_size": vocab_size}
    (folder / ONNX_MANIFEST).write_text(json.dumps(manifest))
    return folder


def test_onnx_export_cut_short_or_of_another_vocabulary_is_refused(tmp_path, tokenizer_dir):
    pieces = len(AutoTokenizer.from_pretrained(tokenizer_dir))
    assert load_tagger(_onnx_export_folder(tmp_path / "whole", tokenizer_dir, pieces)).kind == "onnx"
    cut = _onnx_export_folder(tmp_path / "cut", tokenizer_dir, pieces)
    _truncate(cut / "model.onnx")
    with pytest.raises(InputError, match=rf"{cut}: model\.onnx is truncated or not an ONNX model"):
        load_tagger(cut)
    other = _onnx_export_folder(tmp_path / "other", tokenizer_dir, pieces + 1000)
    with pytest.raises(InputError, match=rf"{other}: the tokenizer has {pieces} pieces"):
        load_tagger(other)


# --- local paths and hub ids -------------------------------------------------------------------------

def test_a_missing_local_model_is_said_missing_with_how_to_get_it(mlflow_workdir, caplog):
    (mlflow_workdir / "models").mkdir()  # a checkout's models/, empty until dvc repro or dvc exp apply
    (mlflow_workdir / "in.txt").write_text("Marie habite à Lyon.\n")
    assert cli.main(["predict", "--model", "models/student_int8", "--input", "in.txt", "--output", "out.jsonl"]) == 2
    message = _one_error(caplog)
    assert "models/student_int8: no such model folder" in message and "dvc exp apply NAME" in message
    assert not (mlflow_workdir / "out.jsonl").exists()


def test_hub_ids_are_told_from_local_paths(mlflow_workdir):
    (mlflow_workdir / "models").mkdir()
    assert not looks_local("Jean-Baptiste/camembert-ner") and not looks_local("camembert-base")
    assert model_kind("Jean-Baptiste/camembert-ner")[0] == "teacher"
    assert all(looks_local(name) for name in ("models/student_int8", "./student", "../student", "~/student",
                                              "a/b/c", str(mlflow_workdir / "absent")))


# --- a bare str, an empty params file, an invalid sweep point -----------------------------------------

class NeverCalled:
    kind = "stub"
    labels = ["O", "B-PER", "I-PER"]

    def predict(self, batch: dict[str, torch.Tensor]) -> list[WindowOutput]:
        raise AssertionError("nothing should be tagged")


def test_a_bare_str_is_refused_not_tagged_per_character(tokenizer_dir):
    tagger = NerTagger(NeverCalled(), AutoTokenizer.from_pretrained(tokenizer_dir), 64, 16)
    with pytest.raises(TypeError, match=r"pass a list of texts, e\.g\. tagger\(\[text\]\)"):
        tagger("Marie habite à Lyon.")
    for sentences in ("Marie habite", ["Marie", "habite"]):
        with pytest.raises(TypeError, match="pass a list of sentences, each a list of words"):
            tagger.tag_words(sentences)
        with pytest.raises(TypeError, match="pass a list of sentences"):
            tagger.tag_words_with_probs(sentences)
    assert tagger([]) == [] and tagger.tag_words([]) == []


@pytest.mark.parametrize("text", ["", "# every key commented out\n# teacher: {batch_size: 8}\n"])
def test_an_empty_params_file_is_refused(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match=rf"{path}: empty"):
        load_params(path)
    path.write_text("{}\n")  # the defaults, asked for explicitly
    assert load_params(path).teacher.model_name == "Jean-Baptiste/camembert-ner"


def test_sweep_dry_run_exits_1_when_a_point_is_invalid(tmp_path, monkeypatch, capsys, random_teacher_dir):
    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "dvc.yaml", tmp_path)
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["teacher"]["model_name"] = str(random_teacher_dir)  # 2 layers: a 3-layer student is invalid
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    (tmp_path / "grid.yaml").write_text("grid: {student.num_layers: [1, 3]}\n", encoding="utf-8")
    assert cli.main(["sweep", "--grid", "grid.yaml", "--dry-run"]) == 1
    assert "# L3: not queued" in capsys.readouterr().out
    (tmp_path / "grid.yaml").write_text("grid: {student.num_layers: [1, 2]}\n", encoding="utf-8")
    assert cli.main(["sweep", "--grid", "grid.yaml", "--dry-run"]) == 0
