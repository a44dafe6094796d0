"""finetune: recover the pruned student with the teacher: the shared Trainer setup (`train:`), its own
schedule and one set of loss weights (`finetune.weights`, the objective prune scored with)."""
from __future__ import annotations

import argparse
from pathlib import Path

from nerdistill.annotated import AnnotatedDir
from nerdistill.data import load_training_data
from nerdistill.losses import Curriculum, DistillContext
from nerdistill.model_folders import check_weights
from nerdistill.modeling import CrfStudent, save_student
from nerdistill.params import Params
from nerdistill.params_reader import provenance
from nerdistill.plots import plot_training
from nerdistill.teacher import stage_teacher
from nerdistill.tracking import is_main_process, tracked_stage
from nerdistill.trainer import train_student


def run(params: Params, model_dir: Path, data_dir: Path, out_dir: Path, history_csv: Path, plot_png: Path,
        checkpoint_dir: Path, resume: bool = False) -> dict:
    train = params.train
    check_weights(Path(model_dir), "re-run the stage that wrote it (dvc repro prune)")
    teacher, tokenizer = stage_teacher(params)
    data = load_training_data(AnnotatedDir(data_dir), tokenizer, params.student.max_length, params.teacher.stride)
    student = CrfStudent.from_pretrained(model_dir)
    student.config.provenance = provenance(params, earlier=student.config.provenance)
    context = DistillContext.build(student.config.id2label, student.config.encoder.num_hidden_layers,
                                   teacher.config.id2label, data.transitions, train.layer_map.pairs(),
                                   train.temperature, Curriculum.constant(params.finetune.weights))
    best, result = train_student(student, teacher, context, data, train, params.finetune, params.base.seed,
                                 checkpoint_dir, resume)
    if not is_main_process():
        return result.summary()  # the main process writes the outputs
    save_student(best, tokenizer, out_dir)
    result.write_history(history_csv, pruning_ratio=params.pruning.ratio)
    plot_training(result.history, plot_png, f"finetune after pruning {params.pruning.ratio:.0%} of heads")
    return result.summary()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="pruned student folder")
    parser.add_argument("--data", type=Path, required=True, help="annotate's output folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for the best student")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--history", type=Path, required=True, help="per-epoch history CSV")
    parser.add_argument("--plot", type=Path, required=True, help="training curves PNG")
    parser.add_argument("--checkpoints", type=Path, required=True, help="Trainer checkpoints (not a DVC output)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint after an interruption")


def main(args: argparse.Namespace, params: Params) -> int:
    tracked_stage("finetune", params, args.params, args.metrics, lambda: run(
        params, model_dir=args.model, data_dir=args.data, out_dir=args.out, history_csv=args.history,
        plot_png=args.plot, checkpoint_dir=args.checkpoints, resume=args.resume),
        artifacts=(args.history, args.plot, args.out))
    return 0
