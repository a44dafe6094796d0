"""prune: score attention heads and FFN neurons by gradient importance (one pass), remove the least
important physically.

Importance is measured with the post-prune finetune loss (`finetune.weights`, with
`train.temperature` and `train.layer_map`), the objective the pruned student is trained on next. Head numbers in `heads_pruned.json` and the
model's provenance (`heads_kept`, `neurons_kept_mask`) are the ORIGINAL ones (those of the
unpruned student), also when the input model was already pruned; the importance JSON and
heatmap use the input model's current heads. `pruning.ffn_ratio: 0` leaves the FFN untouched.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from nerdistill import importance, pruning
from nerdistill.annotated import AnnotatedDir
from nerdistill.data import TrainingData, load_training_data
from nerdistill.io import write_json
from nerdistill.losses import Curriculum, DistillContext
from nerdistill.model_folders import check_weights
from nerdistill.modeling import CrfStudent, save_student
from nerdistill.params import Params, PruningParams
from nerdistill.plots import plot_importance
from nerdistill.teacher import stage_teacher
from nerdistill.tracking import tracked_stage
from nerdistill.trainer import Scorer

log = logging.getLogger(__name__)

HEADS_FILE = "heads_pruned.json"  # beside the pruned model: kept and removed heads, original numbers


def run(params: Params, model_dir: Path, data_dir: Path, out_dir: Path, importance_json: Path,
        heatmap_png: Path) -> dict:
    check_weights(Path(model_dir), "re-run the stage that wrote it (dvc repro distill)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teacher, tokenizer = stage_teacher(params, device)
    student = CrfStudent.from_pretrained(model_dir).to(device)
    data = load_training_data(AnnotatedDir(data_dir), tokenizer, params.student.max_length, params.teacher.stride)
    originals = pruning.originals_now(student, model_dir)
    context = DistillContext.build(student.config.id2label, student.config.encoder.num_hidden_layers,
                                   teacher.config.id2label, data.transitions, params.train.layer_map.pairs(),
                                   params.train.temperature, Curriculum.constant(params.finetune.weights))
    # The Trainer's own loss (finetune.weights, the objective the pruned student trains on next)
    # and its own validation F1: prune measures what distill and finetune optimise.
    scorer = Scorer(student, teacher, context, data, params.pruning.batch_size, params.base.seed)
    before = _figures(student, scorer)

    settings = params.pruning
    scores = importance.score(student, _train_batches(data, params), scorer.loss, settings.num_batches)
    selection = importance.select(scores, settings.ratio, settings.ffn_ratio, settings.scope)
    # ffn_ratio 0 is a true no-op (it keeps every neuron): the FFN layers are not even rebuilt.
    removal = pruning.apply(student, originals, selection.heads, selection.neurons if settings.ffn_ratio > 0 else None,
                            selection.heads_report, selection.ffn_report)
    save_student(student, tokenizer, out_dir, extra_json={HEADS_FILE: removal.heads_file})
    write_json(importance_json, importance.scores_json(scores, selection, originals.heads, settings.num_batches))
    plot_importance(scores.heads, selection.heads, removal.ffn_sizes_before, removal.ffn_sizes_after, heatmap_png)
    after = _figures(student, scorer)
    log.info("pruned %d of %d heads (%d requested) and %d of %d FFN neurons (%d requested): %d -> %d parameters, "
             "val F1 %.4f -> %.4f", selection.heads_report["removed"], before["heads"],
             selection.heads_report["removed_requested"], selection.ffn_report["removed"], before["neurons"],
             selection.ffn_report["removed_requested"], before["params"], after["params"], before["val_f1"],
             after["val_f1"])
    disk_bytes = _safetensors_bytes(model_dir), _safetensors_bytes(out_dir)
    return _metrics(settings, before, after, selection, removal, disk_bytes)


def _figures(student: CrfStudent, scorer: Scorer) -> dict[str, Any]:
    return {**pruning.size_figures(student), "val_f1": scorer.val_f1()}


def _train_batches(data: TrainingData, params: Params) -> DataLoader:
    # A seeded shuffle: the importance batches are a sample of the whole train split, the same each run.
    generator = torch.Generator().manual_seed(params.base.seed)
    return DataLoader(data.train, batch_size=params.pruning.batch_size, shuffle=True, generator=generator,
                      collate_fn=data.collator)


def _metrics(settings: PruningParams, before: dict[str, Any], after: dict[str, Any],
             selection: importance.Selection, removal: pruning.Removal, disk_bytes: tuple[int, int]) -> dict:
    heads, ffn = selection.heads_report, selection.ffn_report
    return {
        **{f"{key}_before": value for key, value in before.items()},
        **{f"{key}_after": value for key, value in after.items()},
        "heads_removed": heads["removed"], "heads_removed_requested": heads["removed_requested"],
        "neurons_removed": ffn["removed"], "neurons_removed_requested": ffn["removed_requested"],
        "ffn_sizes_before": removal.ffn_sizes_before, "ffn_sizes_after": removal.ffn_sizes_after,
        "params_removed": before["params"] - after["params"],
        "params_removed_heads": removal.params_removed_heads, "params_removed_ffn": removal.params_removed_ffn,
        "bytes_before": disk_bytes[0], "bytes_after": disk_bytes[1],
        "val_f1_drop_points": 100.0 * (before["val_f1"] - after["val_f1"]),
        "ratio": settings.ratio, "ffn_ratio": settings.ffn_ratio, "scope": settings.scope,
        "rounding_rule": heads["rounding_rule"], "layers_spared": len(heads["layers_spared"]),
        "ffn_layers_spared": len(ffn["layers_spared"]),
        # A positive ratio that removed nothing, in one line each, where `dvc metrics show` puts it in view.
        "warnings": [report["warning"] for report in (heads, ffn) if report["warning"]],
    }


def _safetensors_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in Path(folder).glob("*.safetensors"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="distilled student folder")
    parser.add_argument("--data", type=Path, required=True, help="annotate's output folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for the pruned student")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--importance", type=Path, required=True, help="head importance JSON")
    parser.add_argument("--heatmap", type=Path, required=True, help="head importance PNG")


def main(args: argparse.Namespace, params: Params) -> int:
    tracked_stage("prune", params, args.params, args.metrics, lambda: run(
        params, model_dir=args.model, data_dir=args.data, out_dir=args.out, importance_json=args.importance,
        heatmap_png=args.heatmap), artifacts=(args.importance, args.heatmap, args.out / HEADS_FILE))
    return 0
