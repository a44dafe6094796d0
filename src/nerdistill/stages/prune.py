"""prune: score attention heads and FFN neurons by gradient importance (one pass), remove the least
important physically.

Importance is measured with the post-prune finetune loss (`finetune.weights`), the objective
the pruned student is about to be trained on. Head numbers in `heads_pruned.json` and the
model's provenance (`heads_kept`, `neurons_kept_mask`) are the ORIGINAL ones (those of the
unpruned student), also when the input model was already pruned; the importance JSON and
heatmap use the input model's current heads. `pruning.ffn_ratio: 0` leaves the FFN untouched.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader

from nerdistill import importance, pruning
from nerdistill.annotated import AnnotatedDir
from nerdistill.data import TrainingData, load_training_data
from nerdistill.io import write_json
from nerdistill.losses import DistillContext
from nerdistill.modeling import CrfStudent, parameter_count, save_student
from nerdistill.params import Params
from nerdistill.plots import plot_importance
from nerdistill.teacher import check_against_teacher, load_teacher
from nerdistill.trainer import Scorer

log = logging.getLogger(__name__)


class Originals(NamedTuple):
    """Original numbers of each layer's current heads and FFN neurons."""

    heads: list[list[int]]
    neurons: list[list[int]]


def run(params: Params, model_dir: Path, data_dir: Path, out_dir: Path, importance_json: Path,
        heatmap_png: Path) -> dict:
    check_against_teacher(params)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teacher, tokenizer = load_teacher(params.teacher.model_name, device)
    student = CrfStudent.from_pretrained(model_dir).to(device)
    data = load_training_data(AnnotatedDir(data_dir), tokenizer, params.student.max_length, params.teacher.stride)
    current = _originals_now(student, model_dir)
    context = DistillContext.from_params(student, teacher.config.id2label, data.transitions, params, "prune")
    # The Trainer's own loss (finetune.weights, the objective the pruned student trains on next)
    # and its own validation F1: prune measures what distill and finetune optimise.
    scorer = Scorer(student, teacher, context, data, params.pruning.batch_size, params.base.seed)
    before = _figures(student, scorer)
    sizes_before = pruning.ffn_sizes(student)

    settings = params.pruning
    scores = importance.score(student, _train_batches(data, params), scorer.loss, settings.num_batches)
    keep, report = importance.select_heads(scores.heads, settings.ratio, settings.scope)
    neuron_keep, ffn_report = importance.select_neurons(scores.neurons, settings.ffn_ratio, settings.scope)
    student.config.head_counts = pruning.prune_heads(student, keep)
    params_after_heads = parameter_count(student)
    if settings.ffn_ratio > 0:  # 0 is a true no-op (it keeps every neuron): the FFN layers are not even rebuilt
        student.config.ffn_sizes = pruning.prune_ffn(student, neuron_keep)
    kept = pruning.original_indices(current.heads, keep)
    heads_file = _heads_file(kept, current.heads, student.config.encoder.num_attention_heads, report)
    student.config.provenance = _provenance(student, kept, pruning.original_indices(current.neurons, neuron_keep),
                                            {"heads": report, "ffn": ffn_report})

    save_student(student, tokenizer, out_dir, extra_json={"heads_pruned.json": {**heads_file, "ffn": ffn_report}})
    write_json(importance_json, {"normalisation": "L2 per layer", "batches": settings.num_batches,
                                 "layers": [[_finite_or_none(v) for v in row] for row in scores.heads.tolist()],
                                 "original_heads": current.heads,
                                 "ffn": importance.layer_summary(scores.neurons, neuron_keep)})
    plot_importance(scores.heads, keep, sizes_before, pruning.ffn_sizes(student), heatmap_png)
    after = _figures(student, scorer)
    log.info("pruned %d of %d heads and %d of %d FFN neurons: %d -> %d parameters, val F1 %.4f -> %.4f",
             report["removed"], before["heads"], ffn_report["removed"], before["neurons"],
             before["params"], after["params"], before["val_f1"], after["val_f1"])
    return {
        **{f"{key}_before": value for key, value in before.items()},
        **{f"{key}_after": value for key, value in after.items()},
        "heads_removed": report["removed"], "heads_removed_requested": report["removed_requested"],
        "neurons_removed": ffn_report["removed"], "neurons_removed_requested": ffn_report["removed_requested"],
        "ffn_sizes_before": sizes_before, "ffn_sizes_after": pruning.ffn_sizes(student),
        "params_removed": before["params"] - after["params"],
        "params_removed_heads": before["params"] - params_after_heads,
        "params_removed_ffn": params_after_heads - after["params"],
        "bytes_before": _safetensors_bytes(model_dir), "bytes_after": _safetensors_bytes(out_dir),
        "val_f1_drop_points": 100.0 * (before["val_f1"] - after["val_f1"]),
        "ratio": settings.ratio, "ffn_ratio": settings.ffn_ratio, "scope": settings.scope,
        "rounding_rule": report["rounding_rule"], "layers_spared": len(report["layers_spared"]),
        "ffn_layers_spared": len(ffn_report["layers_spared"]),
    }


def _originals_now(student: CrfStudent, model_dir: Path) -> Originals:
    """Original numbers of each layer's current heads and neurons, from the provenance of an earlier pruning."""
    provenance = student.config.provenance or {}
    masks = provenance.get("neurons_kept_mask")
    originals = []
    for config_key, sizes, key, listed in (
            ("head_counts", pruning.head_counts(student), "heads_kept", provenance.get("heads_kept")),
            ("ffn_sizes", pruning.ffn_sizes(student), "neurons_kept_mask",
             None if masks is None else [pruning.mask_indices(mask) for mask in masks])):
        if getattr(student.config, config_key) is None:
            originals.append([list(range(size)) for size in sizes])
        elif listed is None or [len(kept) for kept in listed] != sizes:
            raise ValueError(f"{model_dir}/config.json: the model is pruned ({config_key} {sizes}) but its "
                             f"provenance has no matching {key}, so original numbers are unknown; prune the "
                             "distilled student produced by `nerdistill distill` instead")
        else:
            originals.append(listed)
    return Originals(*originals)


def _provenance(student: CrfStudent, heads: list[list[int]], neurons: list[list[int]],
                report: dict[str, Any]) -> dict[str, Any]:
    earlier = student.config.provenance or {}
    recorded = {**earlier, "heads_kept": heads, "pruning": [*earlier.get("pruning", []), report]}
    if student.config.ffn_sizes is not None:
        size = student.config.encoder.intermediate_size
        recorded["neurons_kept_mask"] = [pruning.index_mask(kept, size) for kept in neurons]
    return recorded


def _figures(student: CrfStudent, scorer: Scorer) -> dict[str, Any]:
    return {"heads": sum(pruning.head_counts(student)), "neurons": sum(pruning.ffn_sizes(student)),
            "params": parameter_count(student), "val_f1": scorer.val_f1()}


def _train_batches(data: TrainingData, params: Params) -> DataLoader:
    # A seeded shuffle: the importance batches are a sample of the whole train split, the same each run.
    generator = torch.Generator().manual_seed(params.base.seed)
    return DataLoader(data.train, batch_size=params.pruning.batch_size, shuffle=True, generator=generator,
                      collate_fn=data.collator)


def _heads_file(kept: list[list[int]], current: list[list[int]], original_count: int,
                report: dict[str, Any]) -> dict[str, Any]:
    layers = [{"layer": layer, "kept": heads, "removed": sorted(set(range(original_count)) - set(heads)),
               "removed_now": sorted(set(current[layer]) - set(heads))}
              for layer, heads in enumerate(kept)]
    return {"head_numbering": "original heads of the distilled student, 0-based; layers 0-based",
            **report, "layers": layers}


def _safetensors_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in Path(folder).glob("*.safetensors"))


def _finite_or_none(value: float) -> float | None:
    # JSON has no NaN: heads a layer lacks (after an uneven pruning) are written as null.
    return None if value != value else value
