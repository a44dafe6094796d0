"""The prune stage end to end on the annotated fixture and a student built from the demo teacher."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

from nerdistill.annotated import AnnotatedDir
from nerdistill.data import load_training_data
from nerdistill.io import read_json
from nerdistill.modeling import CrfStudent, build_student
from nerdistill.teacher import load_teacher
from nerdistill.params import Params
from nerdistill.params_reader import parse_override, params_from_dict
from nerdistill.importance import HeadGates, NeuronGates
from nerdistill.pruning import ffn_sizes, head_counts, mask_indices
from nerdistill.stages import prune
from nerdistill.sweep import apply_overrides

REPO = Path(__file__).resolve().parents[1]

TEACHER_LAYERS = [2, 4]


def _params(teacher_dir: Path, ratio: float, scope: str = "per_layer", ffn_ratio: float = 0.5) -> Params:
    return params_from_dict({
        "teacher": {"model_name": str(teacher_dir), "max_length": 64, "stride": 16},
        "student": {"num_layers": 2, "teacher_layers": TEACHER_LAYERS, "max_length": 64},
        "train": {"layer_map": {"teacher": TEACHER_LAYERS, "student": [1, 2]}},
        "pruning": {"ratio": ratio, "ffn_ratio": ffn_ratio, "scope": scope, "num_batches": 2, "batch_size": 8},
    })


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory: pytest.TempPathFactory, annotated_dir: Path, demo_teacher_dir: Path) -> Path:
    teacher, tokenizer = load_teacher(demo_teacher_dir)
    id2label = {i: name for name, i in read_json(annotated_dir / "label2id.json").items()}
    student = build_student(teacher, id2label, TEACHER_LAYERS, dropout=0.1, provenance={"run": "test"})
    folder = tmp_path_factory.mktemp("distilled")
    student.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _prune(params: Params, model_dir: Path, data_dir: Path, root: Path) -> dict:
    return prune.run(params, model_dir=model_dir, data_dir=data_dir, out_dir=root / "pruned",
                     importance_json=root / "importance.json", heatmap_png=root / "heads.png")


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory, student_dir: Path, annotated_dir: Path,
          demo_teacher_dir: Path) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("prune1")
    return root, _prune(_params(demo_teacher_dir, 0.5), student_dir, annotated_dir, root)


def _val_batch(data_dir: Path, model_dir: Path) -> dict[str, torch.Tensor]:
    data = load_training_data(AnnotatedDir(data_dir), AutoTokenizer.from_pretrained(model_dir), 64, 16)
    return next(iter(DataLoader(data.val, batch_size=8, collate_fn=data.collator)))


def _mask(kept: list[list[int]], sizes: list[int]) -> torch.Tensor:
    gates = torch.zeros(len(sizes), max(sizes))
    for layer, units in enumerate(kept):
        gates[layer, units] = 1.0
    return gates


def _gated_emissions(student_dir: Path, kept: list[list[int]], neurons: list[list[int]],
                     batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Emissions of the unpruned student with every head outside `kept` and every FFN neuron
    outside `neurons` gated to zero."""
    student = CrfStudent.from_pretrained(student_dir).eval()
    with (torch.no_grad(), HeadGates(student, _mask(kept, head_counts(student))),
          NeuronGates(student, _mask(neurons, ffn_sizes(student)))):
        return student(**batch).emissions


def _neurons_kept(model_dir: Path) -> list[list[int]]:
    config = json.loads((model_dir / "config.json").read_text())
    return [mask_indices(mask) for mask in config["provenance"]["neurons_kept_mask"]]


def test_pruned_model_is_smaller_reloads_and_equals_the_gated_original(first, student_dir: Path,
                                                                      annotated_dir: Path) -> None:
    root, metrics = first
    heads_file = read_json(root / "pruned" / "heads_pruned.json")
    original = head_counts(CrfStudent.from_pretrained(student_dir))
    pruned = CrfStudent.from_pretrained(root / "pruned").eval()

    expected_counts = [count - count // 2 for count in original]  # floor(0.5 * heads) removed per layer
    assert head_counts(pruned) == pruned.config.head_counts == expected_counts
    assert metrics["heads_before"] == sum(original) and metrics["heads_after"] == sum(expected_counts)
    assert metrics["heads_removed"] == sum(original) - sum(expected_counts)
    assert metrics["params_after"] == sum(p.numel() for p in pruned.parameters()) < metrics["params_before"]
    sizes = ffn_sizes(CrfStudent.from_pretrained(student_dir))
    expected_sizes = [size - size // 2 for size in sizes]  # floor(0.5 * neurons) removed per layer
    assert ffn_sizes(pruned) == pruned.config.ffn_sizes == metrics["ffn_sizes_after"] == expected_sizes
    assert metrics["ffn_sizes_before"] == sizes and metrics["neurons_before"] == sum(sizes)
    assert metrics["neurons_after"] == sum(expected_sizes)
    assert metrics["neurons_removed"] == metrics["neurons_removed_requested"] == sum(sizes) - sum(expected_sizes)
    hidden = pruned.config.encoder.hidden_size
    assert metrics["params_removed_ffn"] == metrics["neurons_removed"] * (2 * hidden + 1)
    assert metrics["params_removed_heads"] + metrics["params_removed_ffn"] == metrics["params_removed"]
    assert metrics["params_removed_heads"] > 0 and metrics["ffn_ratio"] == 0.5
    assert metrics["bytes_after"] < metrics["bytes_before"]
    assert 0.0 <= metrics["val_f1_after"] <= 1.0 and 0.0 <= metrics["val_f1_before"] <= 1.0

    kept = [entry["kept"] for entry in heads_file["layers"]]
    for entry, count in zip(heads_file["layers"], original):
        assert sorted(entry["kept"] + entry["removed"]) == list(range(count))
    assert pruned.config.provenance["heads_kept"] == kept and pruned.config.provenance["run"] == "test"

    neurons = _neurons_kept(root / "pruned")
    assert [len(kept) for kept in neurons] == expected_sizes

    batch = _val_batch(annotated_dir, root / "pruned")
    with torch.no_grad():
        got = pruned(**batch).emissions
    torch.testing.assert_close(got, _gated_emissions(student_dir, kept, neurons, batch), atol=1e-5, rtol=1e-5)

    importance = read_json(root / "importance.json")
    assert [len(row) for row in importance["layers"]] == original
    assert [(layer["units"], layer["kept"]) for layer in importance["ffn"]] == list(zip(sizes, expected_sizes))
    assert all(layer["highest_removed"] <= layer["lowest_kept"] for layer in importance["ffn"])
    assert (root / "heads.png").read_bytes()[:4] == b"\x89PNG"


def test_pruning_a_pruned_model_reports_original_head_numbers(first, student_dir: Path, annotated_dir: Path,
                                                             demo_teacher_dir: Path, tmp_path: Path) -> None:
    root, _ = first
    first_kept = [entry["kept"] for entry in read_json(root / "pruned" / "heads_pruned.json")["layers"]]
    first_neurons = _neurons_kept(root / "pruned")
    metrics = _prune(_params(demo_teacher_dir, 0.5, "global"), root / "pruned", annotated_dir, tmp_path)
    layers = read_json(tmp_path / "pruned" / "heads_pruned.json")["layers"]
    kept = [entry["kept"] for entry in layers]
    assert metrics["heads_removed"] == sum(len(heads) for heads in first_kept) // 2 - metrics["layers_spared"]
    for entry, before in zip(layers, first_kept):
        assert set(entry["kept"]) <= set(before) and entry["kept"]
        assert set(entry["removed_now"]) == set(before) - set(entry["kept"])
    assert read_json(tmp_path / "importance.json")["original_heads"] == first_kept
    neurons = _neurons_kept(tmp_path / "pruned")
    assert all(set(now) < set(before) for now, before in zip(neurons, first_neurons))
    assert metrics["neurons_removed_requested"] == sum(len(kept) for kept in first_neurons) // 2  # global
    assert metrics["neurons_removed"] == sum(map(len, first_neurons)) - sum(map(len, neurons))

    batch = _val_batch(annotated_dir, tmp_path / "pruned")
    twice = CrfStudent.from_pretrained(tmp_path / "pruned").eval()
    with torch.no_grad():
        got = twice(**batch).emissions
    torch.testing.assert_close(got, _gated_emissions(student_dir, kept, neurons, batch), atol=1e-5, rtol=1e-5)


def test_ratios_zero_leave_the_model_unchanged(student_dir: Path, annotated_dir: Path, demo_teacher_dir: Path,
                                               tmp_path: Path) -> None:
    metrics = _prune(_params(demo_teacher_dir, 0.0, ffn_ratio=0.0), student_dir, annotated_dir, tmp_path)
    assert metrics["heads_removed"] == metrics["neurons_removed"] == 0
    assert metrics["params_after"] == metrics["params_before"] and metrics["params_removed_ffn"] == 0
    assert metrics["val_f1_after"] == metrics["val_f1_before"]
    original, pruned = CrfStudent.from_pretrained(student_dir).eval(), CrfStudent.from_pretrained(tmp_path / "pruned")
    assert pruned.config.ffn_sizes is None and "neurons_kept_mask" not in pruned.config.provenance
    state = original.state_dict()
    assert all(torch.equal(value, state[key]) for key, value in pruned.state_dict().items())
    batch = _val_batch(annotated_dir, tmp_path / "pruned")
    with torch.no_grad():
        assert torch.equal(pruned.eval()(**batch).emissions, original(**batch).emissions)


def test_ffn_ratio_zero_prunes_heads_only(student_dir: Path, annotated_dir: Path, demo_teacher_dir: Path,
                                          tmp_path: Path) -> None:
    metrics = _prune(_params(demo_teacher_dir, 0.5, ffn_ratio=0.0), student_dir, annotated_dir, tmp_path)
    pruned = CrfStudent.from_pretrained(tmp_path / "pruned")
    assert metrics["heads_removed"] > 0 and metrics["neurons_removed"] == metrics["params_removed_ffn"] == 0
    assert pruned.config.ffn_sizes is None and metrics["ffn_sizes_after"] == metrics["ffn_sizes_before"]


def test_pruned_model_without_head_provenance_is_refused(first, annotated_dir: Path, demo_teacher_dir: Path,
                                                         tmp_path: Path) -> None:
    root, _ = first
    model_dir = tmp_path / "model"
    pruned = CrfStudent.from_pretrained(root / "pruned")
    first_provenance = pruned.config.provenance
    pruned.config.provenance = {}
    pruned.save_pretrained(model_dir)
    with pytest.raises(ValueError, match="heads_kept"):
        _prune(_params(demo_teacher_dir, 0.25), model_dir, annotated_dir, tmp_path / "out")
    assert json.loads((model_dir / "config.json").read_text())["head_counts"] == pruned.config.head_counts
    assert not (tmp_path / "out" / "pruned").exists()
    pruned.config.provenance = {"heads_kept": first_provenance["heads_kept"]}
    pruned.save_pretrained(model_dir)
    with pytest.raises(ValueError, match="neurons_kept_mask"):
        _prune(_params(demo_teacher_dir, 0.25), model_dir, annotated_dir, tmp_path / "out")


def _laptop_overrides() -> dict:
    """The `-S` overrides of the README's laptop command, as a user copies them."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Laptop profile"):]
    command = re.search(r"```bash\n(dvc exp run .*?)```", section, re.S).group(1).replace("\\\n", " ")
    words = shlex.split(command)
    return dict(parse_override(words[i + 1]) for i, word in enumerate(words) if word == "-S")


def test_the_readme_ratio_prunes_heads_on_the_laptop_profile(annotated_dir: Path, demo_teacher_dir: Path,
                                                              tmp_path: Path) -> None:
    """`dvc exp run -S pruning.ratio=0.15` with the laptop overrides: 0.15 of 3 layers x 4 heads removes heads."""
    overrides = _laptop_overrides()
    assert overrides["student.num_layers"] == 3 and "teacher.model_name" in overrides
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    # Windows and batches shrunk for speed only: the head counts and the ratio are the profile's.
    speed = {"teacher.max_length": 64, "teacher.stride": 16, "student.max_length": 64, "pruning.num_batches": 2,
             "pruning.batch_size": 8}
    params = params_from_dict(apply_overrides(raw, {**overrides, **speed, "teacher.model_name": str(demo_teacher_dir),
                                                    "pruning.ratio": 0.15}))
    teacher, tokenizer = load_teacher(demo_teacher_dir)
    id2label = {i: name for name, i in read_json(annotated_dir / "label2id.json").items()}
    with torch.random.fork_rng():  # the same student whatever ran before, without touching the global RNG
        torch.manual_seed(0)
        student = build_student(teacher, id2label, list(params.student.teacher_layers), dropout=0.1,
                                provenance={"run": "test"})
    student.save_pretrained(tmp_path / "distilled")
    tokenizer.save_pretrained(tmp_path / "distilled")
    metrics = _prune(params, tmp_path / "distilled", annotated_dir, tmp_path)
    assert metrics["heads_before"] == 12  # the demo profile: 3 layers of the demo teacher's 4 heads
    assert metrics["heads_removed"] == metrics["heads_removed_requested"] == 2 and metrics["warnings"] == []
