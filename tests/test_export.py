"""The export stage and ONNX export: the exported graph (fp32 and dynamic int8) tags like the PyTorch
student, embeddings are int8 too, pruned head counts and FFN sizes survive, the folder is self-contained,
every model kind gives the same output format, a trimmed vocabulary is judged on the test split it never
saw, and an interrupted export leaves the previous fp32/int8 pair whole."""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import signal
import tempfile
from pathlib import Path

import onnx
import onnxruntime.quantization
import pytest
import torch
import yaml

from nerdistill import cli
from nerdistill.annotated import AnnotatedDir, load_split
from nerdistill.export import MODEL_FILE, _quantize, _signals_deferred, export_student, load_student
from nerdistill.io import InputError, read_json
from nerdistill.crf import FORBIDDEN
from nerdistill.modeling import CrfStudent, build_student, save_student
from nerdistill.params import ExportParams
from nerdistill.params_reader import params_from_dict
from nerdistill.pruning import prune_ffn, prune_heads
from nerdistill.stages import export as export_stage
from nerdistill.tagger.load import load_tagger
from nerdistill.teacher import load_teacher
from nerdistill.text import entity_spans, split_words

HEADS_KEPT = {0: [0, 2], 1: [1], 2: [0, 1, 2, 3], 3: [1, 3]}  # uneven on purpose: 2, 1, 4, 2 heads
NEURONS_KEPT = {1: list(range(200)), 3: list(range(64, 256))}  # FFN sizes 256, 200, 256, 192


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory, demo_teacher_dir, annotated_dir) -> Path:
    """A pruned student that tags like the demo teacher: all four teacher layers, the teacher's
    classifier row of type X as both B-X and I-X emissions."""
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
def exported(student_dir, annotated_dir, tmp_path_factory) -> tuple[Path, Path, dict]:
    """The export stage with a trimmed vocabulary (student.vocab: corpus): (fp32 folder, int8 folder, metrics)."""
    root = tmp_path_factory.mktemp("export")
    metrics = export_stage.run(params_from_dict({"student": {"vocab": "corpus"}}), model_dir=student_dir,
                               data_dir=annotated_dir, fp32_dir=root / "onnx_fp32", int8_dir=root / "onnx_int8")
    return root / "onnx_fp32", root / "onnx_int8", metrics


@pytest.fixture(scope="module")
def fp32_dir(exported) -> Path:
    return exported[0]


@pytest.fixture(scope="module")
def int8_dir(exported) -> Path:
    return exported[1]


@pytest.fixture(scope="module")
def sentences(annotated_dir) -> list[list[str]]:
    """The phrases the vocabulary was trimmed on (train and val: 270), so that agreement rates rest on
    ~1,000 entities and measure quantisation alone (the test split's words may be cut otherwise)."""
    return [record["tokens"] for split in ("train", "val") for record in load_split(annotated_dir / f"{split}.jsonl")]


def entity_set(tag_lists: list[list[str]]) -> set[tuple[int, str, int, int]]:
    return {(row, *span) for row, tags in enumerate(tag_lists) for span in entity_spans(tags)}


def test_stage_metrics_say_what_exporting_cost(exported, student_dir):
    fp32_dir, int8_dir, metrics = exported
    assert sorted(path.name for path in fp32_dir.parent.iterdir()) == ["onnx_fp32", "onnx_int8"]  # no temp left
    assert read_json(fp32_dir / "nerdistill_onnx.json")["exported"] == "student"
    assert set(metrics) == {"source", "vocab", "test_sentences", "reference_entities", "heldout_segmentation",
                            "fp32", "int8"}
    assert metrics["source"] == str(student_dir) and metrics["vocab"]["mode"] == "corpus"
    assert metrics["vocab"]["splits"] == ["train", "val"]
    assert metrics["test_sentences"] > 20 and metrics["reference_entities"] > 40
    fidelity = {"bytes", "max_abs_emission_diff", "f1_vs_pytorch", "sentences_identical"}
    assert set(metrics["fp32"]) == fidelity and set(metrics["int8"]) == fidelity | {"bytes_vs_fp32"}
    assert metrics["fp32"]["max_abs_emission_diff"] < 1e-4
    heldout = metrics["heldout_segmentation"]
    assert heldout["split"] == "test" and heldout["sentences"] == metrics["test_sentences"]
    assert heldout["words_resegmented_share"] == heldout["words_resegmented"] / heldout["words"] < 0.1
    # Measured on the test split, which trimming never saw: a few of its words are cut otherwise, which
    # costs entities in fp32 and int8 alike; quantisation costs at most a few entities more (one of the
    # test split's ~80 is 1.2 points).
    assert 0.8 <= metrics["fp32"]["f1_vs_pytorch"] <= 1.0
    assert metrics["int8"]["f1_vs_pytorch"] >= metrics["fp32"]["f1_vs_pytorch"] - 0.03
    assert metrics["int8"]["bytes_vs_fp32"] == metrics["int8"]["bytes"] / metrics["fp32"]["bytes"]


def test_fp32_export_tags_exactly_like_pytorch(student_dir, fp32_dir, annotated_dir):
    manifest = read_json(fp32_dir / "nerdistill_onnx.json")
    assert manifest["quantization"] == "none" and manifest["head_counts"] == [2, 1, 4, 2]
    assert manifest["ffn_sizes"] == [256, 200, 256, 192]
    original = CrfStudent.from_pretrained(student_dir)
    assert 0 < manifest["parameters"] <= sum(p.numel() for p in original.parameters())
    files = {path.name for path in fp32_dir.iterdir()}
    assert {"model.onnx", "crf.json", "nerdistill_onnx.json", "tokenizer_config.json"} <= files
    assert not list(fp32_dir.glob("*.pkl")) and not list(fp32_dir.glob("*.bin"))

    # The val split: the vocabulary was trimmed on it, so its words are cut as the student was trained.
    val_split = [record["tokens"] for record in load_split(annotated_dir / "val.jsonl")]
    torch_tags = load_tagger(student_dir, device="cpu").tag_words(val_split, batch_size=8)
    onnx_tags = load_tagger(fp32_dir).tag_words(val_split, batch_size=8)
    assert len(entity_set(torch_tags)) > 40, "the student should find entities for the comparison to mean anything"
    assert onnx_tags == torch_tags


def test_int8_export_keeps_entities(student_dir, int8_dir, sentences):
    manifest = read_json(int8_dir / "nerdistill_onnx.json")
    assert (manifest["quantization"], manifest["per_channel"], manifest["quantized_ops"]) == \
        ("dynamic-int8", True, ["MatMul", "Gather"])
    tagger = load_tagger(int8_dir)
    assert tagger.kind == "onnx"
    reference = entity_set(load_tagger(student_dir, device="cpu").tag_words(sentences))
    quantised = entity_set(tagger.tag_words(sentences))
    agreement = len(reference & quantised) / len(reference)
    logging.getLogger(__name__).info("int8 entity agreement with PyTorch on the annotated phrases: %.4f (%d entities)",
                                     agreement, len(reference))
    assert agreement >= 0.99


def _embedding_types(model_path: Path) -> dict[str, int]:
    """ONNX element type of each word/position embedding table in the graph, by table."""
    tables = {}
    for tensor in onnx.load(str(model_path)).graph.initializer:
        for table in ("word_embeddings", "position_embeddings"):
            if table in tensor.name and len(tensor.dims) == 2:
                tables[table] = tensor.data_type
    return tables


def test_embeddings_are_int8_unless_told_otherwise(exported, tmp_path):
    fp32_dir, int8_dir, metrics = exported
    assert _embedding_types(fp32_dir / MODEL_FILE) == {"word_embeddings": onnx.TensorProto.FLOAT,
                                                       "position_embeddings": onnx.TensorProto.FLOAT}
    assert set(_embedding_types(int8_dir / MODEL_FILE).values()) <= {onnx.TensorProto.UINT8, onnx.TensorProto.INT8}
    # Weights and embeddings at 1 byte instead of 4, plus scales and graph: 0.3; about 0.6 with fp32 embeddings.
    assert metrics["int8"]["bytes_vs_fp32"] < 0.35

    _quantize(fp32_dir / MODEL_FILE, tmp_path / MODEL_FILE, ExportParams(quantize_embeddings=False))
    assert set(_embedding_types(tmp_path / MODEL_FILE).values()) == {onnx.TensorProto.FLOAT}
    assert (tmp_path / MODEL_FILE).stat().st_size > 1.5 * metrics["int8"]["bytes"]


def test_tagger_sessions_run_residual_layer_norms_unfused(int8_dir, tmp_path):
    """Every export is run as Add + LayerNormalization, never as onnxruntime's slower SkipLayerNormalization
    (onnx_session.SLOW_FUSIONS), and its emissions are the same as with the fusion."""
    import onnxruntime as ort

    from nerdistill.tagger.onnx import _session

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "as_run.onnx")  # the graph after the session's fusions
    session = _session(int8_dir / MODEL_FILE, options, ["CPUExecutionProvider"])
    ops = {node.op_type for node in onnx.load(tmp_path / "as_run.onnx").graph.node}
    assert "LayerNormalization" in ops and "SkipLayerNormalization" not in ops

    fused = ort.InferenceSession(str(int8_dir / MODEL_FILE), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": [[0, 5, 6, 7, 2]], "attention_mask": [[1] * 5], "word_index": [[1, 2, 3]]}
    feeds = {name: torch.tensor(value).numpy() for name, value in feeds.items()}
    assert session.run(["emissions"], feeds)[0] == pytest.approx(fused.run(["emissions"], feeds)[0], abs=0.05)


def test_onnx_windows_long_lines_like_pytorch(student_dir, fp32_dir, annotated_dir):
    text = " ".join(record["text"] for record in load_split(annotated_dir / "train.jsonl")[:15])
    windows = {"max_length": 40, "stride": 12, "batch_size": 4}
    torch_entities = load_tagger(student_dir, device="cpu", **windows)([text])[0]
    onnx_tagger = load_tagger(fp32_dir, **windows)
    assert len(onnx_tagger.words.windows([w.text for w in split_words(text)])) > 5
    onnx_entities = onnx_tagger([text])[0]
    assert [(e["start"], e["end"], e["type"]) for e in onnx_entities] == \
        [(e["start"], e["end"], e["type"]) for e in torch_entities]
    assert [e["score"] for e in onnx_entities] == pytest.approx([e["score"] for e in torch_entities], abs=1e-3)


def test_crf_file_holds_the_constrained_decoding_weights(fp32_dir):
    crf = read_json(fp32_dir / "crf.json")
    labels = crf["labels"]
    assert labels[0] == "O" and len(crf["transitions"]) == len(labels)
    for label, score in zip(labels, crf["start"]):
        assert (score == FORBIDDEN) == label.startswith("I-")
    o_to_i = [crf["transitions"][0][j] for j, label in enumerate(labels) if label.startswith("I-")]
    assert o_to_i and all(score == FORBIDDEN for score in o_to_i)


def test_every_model_kind_gives_the_same_output_format(student_dir, fp32_dir, demo_teacher_dir):
    text = "Le docteur Jean Martin a reçu Mme Durand à l'hôpital Saint-Louis de Paris."
    outputs = {path.name if isinstance(path, Path) else path: load_tagger(path, device="cpu")([text])[0]
               for path in (student_dir, fp32_dir, demo_teacher_dir)}
    for name, entities in outputs.items():
        assert entities, f"{name} found nothing"
        for entity in entities:
            assert set(entity) == {"text", "type", "start", "end", "token_start", "token_end", "score"}, name
            assert text[entity["start"]:entity["end"]] == entity["text"]
            assert isinstance(entity["score"], float) and 0 < entity["score"] <= 1
    json.dumps(outputs)  # JSON-serialisable as predict writes it


def test_export_refuses_what_is_not_a_student(demo_teacher_dir, annotated_dir, tmp_path):
    with pytest.raises(InputError, match="export takes a CRF student folder"):
        load_student(demo_teacher_dir)
    with pytest.raises(InputError, match="no such model folder"):
        export_stage.run(params_from_dict({}), model_dir=tmp_path / "absent", data_dir=annotated_dir,
                         fp32_dir=tmp_path / "fp32", int8_dir=tmp_path / "int8")
    assert not (tmp_path / "fp32").exists() and not (tmp_path / "int8").exists()


def test_full_vocabulary_through_the_command(student_dir, annotated_dir, mlflow_workdir, monkeypatch):
    def no_trimming(*args):
        raise AssertionError("student.vocab: full must not trim")

    monkeypatch.setattr(export_stage, "trim_student", no_trimming)
    (mlflow_workdir / "params.yaml").write_text(yaml.safe_dump({"student": {"vocab": "full"}}))
    code = cli.main(["export", "--model", str(student_dir), "--data", str(annotated_dir), "--fp32", "fp32",
                     "--int8", "int8", "--metrics", "export.json"])
    assert code == 0
    metrics = json.loads((mlflow_workdir / "export.json").read_text())
    _, tokenizer = load_student(student_dir)
    assert metrics["vocab"] == {"mode": "full", "size": len(tokenizer)}
    heldout = metrics["heldout_segmentation"]  # the full vocabulary cuts every word as before: zeros
    assert heldout["words"] > 400 and heldout["words_resegmented"] == heldout["subtokens_changed"] == 0
    assert heldout["words_resegmented_share"] == heldout["subtokens_changed_share"] == 0.0
    assert read_json(mlflow_workdir / "int8" / "nerdistill_onnx.json")["vocab_size"] == len(tokenizer)
    assert load_tagger(mlflow_workdir / "fp32").tag_words([["Marie", "habite", "à", "Lyon", "."]])


@pytest.fixture(scope="module")
def narrow_data(annotated_dir, tmp_path_factory) -> Path:
    """annotated_dir with train and val cut to 10 and 3 phrases, test whole: a vocabulary trimmed on
    train and val lacks pieces of most test words, names included."""
    source, out = AnnotatedDir(annotated_dir), AnnotatedDir(tmp_path_factory.mktemp("narrow") / "data")
    splits = {"train": source.split("train")[:10], "val": source.split("val")[:3], "test": source.split("test")}
    out.write(splits, source.label2id(), source.transitions())
    return out.path


def test_trimming_is_judged_on_words_it_never_saw(student_dir, narrow_data, tmp_path):
    data = AnnotatedDir(narrow_data)
    seen = [record["tokens"] for split in ("train", "val") for record in data.split(split)]
    test = [record["tokens"] for record in data.split("test")]
    assert {word for words in test for word in words} - {word for words in seen for word in words}

    metrics = export_stage.run(params_from_dict({"student": {"vocab": "corpus"}}), model_dir=student_dir,
                               data_dir=narrow_data, fp32_dir=tmp_path / "fp32", int8_dir=tmp_path / "int8")

    heldout = metrics["heldout_segmentation"]
    assert heldout["words_resegmented_share"] > 0.2 and heldout["subtokens_changed_share"] > 0.2
    assert heldout["subtokens_after"] > heldout["subtokens_before"]
    # Those test words reach the student in pieces it was never trained on: its tags change.
    assert metrics["int8"]["f1_vs_pytorch"] < 1.0 and metrics["fp32"]["f1_vs_pytorch"] < 1.0
    assert metrics["int8"]["sentences_identical"] < 1.0
    # On what it was trimmed on, the trimmed export still tags exactly as the untrimmed student.
    assert load_tagger(tmp_path / "fp32").tag_words(seen) == load_tagger(student_dir, device="cpu").tag_words(seen)


def _digests(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


def test_export_stopped_while_quantising_leaves_the_previous_pair(student_dir, exported, tmp_path, monkeypatch):
    for name, folder in (("fp32", exported[0]), ("int8", exported[1])):
        shutil.copytree(folder, tmp_path / name)
    before = {name: _digests(tmp_path / name) for name in ("fp32", "int8")}
    during = {}

    def stopped(model_input, model_output, **settings):
        during["tempdir"] = Path(tempfile.gettempdir())
        during["siblings"] = sorted(path.name for path in tmp_path.iterdir())
        raise KeyboardInterrupt  # Ctrl-C, or SIGTERM as cli raises it

    monkeypatch.setattr(onnxruntime.quantization, "quantize_dynamic", stopped)
    student, tokenizer = load_student(student_dir)
    system_temp = tempfile.gettempdir()
    with pytest.raises(KeyboardInterrupt):
        export_student(student, tokenizer, tmp_path / "fp32", tmp_path / "int8", ExportParams(), source="another")

    # Both were being written beside their outputs, the quantiser's scratch files too, never in /tmp.
    assert during["tempdir"].is_relative_to(tmp_path)
    assert [name for name in during["siblings"] if name.startswith(".fp32.")]
    assert [name for name in during["siblings"] if name.startswith(".int8.")]
    # The previous pair, byte for byte, from one source; no staging folder or scratch file left.
    assert {name: _digests(tmp_path / name) for name in ("fp32", "int8")} == before
    sources = {read_json(tmp_path / name / "nerdistill_onnx.json")["source"] for name in ("fp32", "int8")}
    assert sources == {str(student_dir)}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["fp32", "int8"]
    assert tempfile.gettempdir() == system_temp


def test_ctrl_c_waits_for_the_renames():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with _signals_deferred():
            signal.raise_signal(signal.SIGINT)
            done.append("both folders renamed")
    assert done == ["both folders renamed"]
