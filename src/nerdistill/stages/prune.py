"""prune: score attention heads by gradient importance, remove the least important physically.

Importance is measured with the post-prune finetune loss (`finetune.weights`), the objective
the pruned student is about to be trained on. Head numbers in `heads_pruned.json` and the
model's provenance are the ORIGINAL ones (those of the unpruned student), also when the input
model was already pruned; the importance JSON and heatmap use the input model's current heads.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from nerdistill import pruning
from nerdistill.annotated import AnnotatedDir
from nerdistill.data import TrainingData, load_training_data
from nerdistill.io import write_json
from nerdistill.losses import DistillContext
from nerdistill.modeling import CrfStudent, save_student
from nerdistill.params import Params
from nerdistill.plots import plot_importance
from nerdistill.teacher import check_against_teacher, load_teacher
from nerdistill.trainer import Scorer

log = logging.getLogger(__name__)


def run(params: Params, model_dir: Path, data_dir: Path, out_dir: Path, importance_json: Path,
        heatmap_png: Path) -> dict:
    check_against_teacher(params)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teacher, tokenizer = load_teacher(params.teacher.model_name, device)
    student = CrfStudent.from_pretrained(model_dir).to(device)
    data = load_training_data(AnnotatedDir(data_dir), tokenizer, params.student.max_length, params.teacher.stride)
    current = _original_heads_now(student, model_dir)
    context = DistillContext.from_params(student, teacher.config.id2label, data.transitions, params, "prune")
    # The Trainer's own loss (finetune.weights, the objective the pruned student trains on next)
    # and its own validation F1: prune measures what distill and finetune optimise.
    scorer = Scorer(student, teacher, context, data, params.pruning.batch_size, params.base.seed)
    before = {"heads": sum(pruning.head_counts(student)), "params": _n_params(student), "val_f1": scorer.val_f1()}

    importance = pruning.head_importance(student, _train_batches(data, params), scorer.loss,
                                         params.pruning.num_batches)
    keep, report = pruning.select_heads(importance, params.pruning.ratio, params.pruning.scope)
    student.config.head_counts = pruning.prune_heads(student, keep)
    kept = pruning.original_heads(current, keep)
    heads_file = _heads_file(kept, current, student.config.encoder.num_attention_heads, report)
    student.config.provenance = {**(student.config.provenance or {}), "heads_kept": kept,
                                 "pruning": [*(student.config.provenance or {}).get("pruning", []), report]}

    save_student(student, tokenizer, out_dir, extra_json={"heads_pruned.json": heads_file})
    write_json(importance_json, {"normalisation": "L2 per layer", "batches": params.pruning.num_batches,
                                 "layers": [[_finite_or_none(v) for v in row] for row in importance.tolist()],
                                 "original_heads": current})
    plot_importance(importance, keep, heatmap_png)
    after = {"heads": sum(student.config.head_counts), "params": _n_params(student), "val_f1": scorer.val_f1()}
    log.info("pruned %d of %d heads: %d -> %d parameters, val F1 %.4f -> %.4f", report["removed"],
             before["heads"], before["params"], after["params"], before["val_f1"], after["val_f1"])
    return {
        **{f"{key}_before": value for key, value in before.items()},
        **{f"{key}_after": value for key, value in after.items()},
        "heads_removed": report["removed"], "heads_removed_requested": report["removed_requested"],
        "params_removed": before["params"] - after["params"],
        "bytes_before": _safetensors_bytes(model_dir), "bytes_after": _safetensors_bytes(out_dir),
        "val_f1_drop_points": 100.0 * (before["val_f1"] - after["val_f1"]),
        "ratio": params.pruning.ratio, "scope": params.pruning.scope, "rounding_rule": report["rounding_rule"],
        "layers_spared": len(report["layers_kept_one_head"]),
    }


def _original_heads_now(student: CrfStudent, model_dir: Path) -> list[list[int]]:
    """Original numbers of each layer's current heads, from the provenance of an earlier pruning."""
    counts = pruning.head_counts(student)
    if student.config.head_counts is None:
        return [list(range(count)) for count in counts]
    kept = (student.config.provenance or {}).get("heads_kept")
    if kept is None or [len(heads) for heads in kept] != counts:
        raise ValueError(f"{model_dir}/config.json: the model is pruned (head_counts {counts}) but its provenance "
                         "has no matching heads_kept list, so original head numbers are unknown; prune the "
                         "distilled student produced by `nerdistill distill` instead")
    return kept


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


def _n_params(model: torch.nn.Module) -> int:
    return sum(param.numel() for param in model.parameters())


def _safetensors_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in Path(folder).glob("*.safetensors"))


def _finite_or_none(value: float) -> float | None:
    # JSON has no NaN: heads a layer lacks (after an uneven pruning) are written as null.
    return None if value != value else value
