"""params.yaml -> typed params: defaults are the seeds' configuration, bad values name their key."""
from pathlib import Path

import pytest
import yaml

from nerdistill.params import ParamsError
from nerdistill.params_reader import flat as params_flat
from nerdistill.params_reader import load_params, params_from_dict

REPO = Path(__file__).resolve().parents[1]


def test_shipped_params_are_the_seeds_configuration():
    params = load_params(REPO / "params.yaml")
    assert params.teacher.model_name == "Jean-Baptiste/camembert-ner"
    assert params.student.num_layers == 10
    assert params.train.temperature == 2.5
    assert params.pruning.ratio == 0.25 and params.pruning.ffn_ratio == 0.5
    assert (params.distill.epochs, params.finetune.epochs) == (10, 2)
    assert params.train.batch_size == 16 and params.distill.learning_rate == 2e-5
    assert params.train.layer_map.pairs() == [(2, 2), (4, 3), (6, 5), (8, 7), (10, 9), (12, 10)]
    assert (params.student.vocab, params.gate.variant) == ("full", "onnx_int8")
    assert params.export.per_channel and params.export.quantize_embeddings


def test_every_student_layer_in_the_layer_map_starts_from_its_teacher_layer():
    params = load_params(REPO / "params.yaml")
    for teacher_layer, student_layer in params.train.layer_map.pairs():
        assert params.student.teacher_layers[student_layer - 1] == teacher_layer


@pytest.mark.parametrize("raw, key", [
    ({"pruning": {"ratio": 1.0}}, "pruning.ratio"),
    ({"pruning": {"ratio": -0.1}}, "pruning.ratio"),
    ({"pruning": {"ffn_ratio": 1.0}}, "pruning.ffn_ratio"),
    ({"pruning": {"ffn_ratio": -0.5}}, "pruning.ffn_ratio"),
    ({"distill": {"epochs": 0}}, "distill.epochs"),
    ({"train": {"temperature": "hot"}}, "train.temperature"),
    ({"train": {"temperature": 0.0}}, "train.temperature"),
    ({"train": {"batch_size": 0}}, "train.batch_size"),
    ({"train": {"layer_map": {"teacher": [2, 4], "student": [2]}}}, "train.layer_map"),
    ({"train": {"layer_map": {"teacher": [2], "student": [11]}}}, "train.layer_map.student"),
    ({"train": {"crf_lr_multiplier": 1e5}}, "train.crf_lr_multiplier"),
    ({"finetune": {"batch_size": 16}}, "finetune.batch_size"),
    ({"distill": {"temperature": 2.5}}, "distill.temperature"),
    ({"pruning": {"scope": "random"}}, "pruning.scope"),
    ({"pruning": {"ratoi": 0.2}}, "pruning.ratoi"),
    ({"student": {"num_layers": 4}}, "student.teacher_layers"),
    ({"annotate": {"split": {"train": 0.8, "val": 0.1, "test": 0.2}}}, "annotate.split"),
    ({"evaluate": {"gold_path": "no/such/file.conll"}}, "evaluate.gold_path"),
    ({"gate": {"fail_on_nogo": "yes"}}, "gate.fail_on_nogo"),
    ({"gate": {"max_class_f1_drop": -0.5}}, "gate.max_class_f1_drop"),
    ({"finetune": {"weights": [1.0, 0.8]}}, "finetune.weights"),
    ({"extra": {}}, "extra"),
    ({"student": {"vocab": "trimmed"}}, "student.vocab"),
    ({"export": {"per_channel": "yes"}}, "export.per_channel"),
    ({"export": {"calibrate": True}}, "export.calibrate"),
    ({"gate": {"variant": ""}}, "gate.variant"),
    ({"gate": {"variant": ":cpu_onnx"}}, "gate.variant"),
    ({"gate": {"variant": "final:"}}, "gate.variant"),
    ({"gate": {"variant": "final:cpu_fp32:x"}}, "gate.variant"),
])
def test_bad_values_name_the_key(raw, key):
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
        params_from_dict(raw)


def test_allowed_values_are_listed():
    with pytest.raises(ParamsError, match="per_layer, global"):
        params_from_dict({"pruning": {"scope": "random"}})


def test_student_vocab_is_checked_in_code_too():
    from nerdistill.params import StudentParams

    params_from_dict({"student": {"vocab": "full"}})
    with pytest.raises(ParamsError, match=r"student\.vocab = 'Corpus'.*full .*corpus"):
        StudentParams(vocab="Corpus").validate("student")


def test_finetune_reads_no_distill_key():
    """finetune's settings come from train: and finetune: alone, so a distill edit cannot change them."""
    base, changed = params_from_dict({}), params_from_dict({"distill": {"epochs": 3, "learning_rate": 1e-4}})
    assert (changed.train, changed.finetune) == (base.train, base.finetune)


def test_load_params_names_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"pruning": {"ratio": 2}}))
    with pytest.raises(ParamsError, match=str(path)):
        load_params(path)
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "missing.yaml")


def test_flat_keys_match_dvc_set_syntax():
    flat = params_flat(params_from_dict({}))
    assert flat["pruning.ratio"] == 0.25
    assert flat["train.layer_map.teacher"] == [2, 4, 6, 8, 10, 12]


def test_floats_without_a_dot_are_numbers(tmp_path):
    # `dvc exp run -S finetune.learning_rate=0.00005` writes `5e-05`, a string to YAML 1.1.
    path = tmp_path / "params.yaml"
    path.write_text("finetune:\n  learning_rate: 5e-05\ndistill:\n  learning_rate: 1E-4\n", encoding="utf-8")
    params = load_params(path)
    assert params.finetune.learning_rate == 5e-5
    assert params.distill.learning_rate == 1e-4
