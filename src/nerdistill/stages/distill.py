"""distill: build the CRF student from the teacher and train it with Patient KD.

The student copies `student.teacher_layers` of the teacher; its CRF starts from the teacher's
transition prior (`distill.crf_init`). It trains with the shared Trainer setup (`train:`), its own
schedule and the two-phase loss curriculum (`distill.phase*`).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from transformers import set_seed

from nerdistill.annotated import AnnotatedDir
from nerdistill.data import load_training_data
from nerdistill.losses import Curriculum, DistillContext
from nerdistill.modeling import build_student, save_student
from nerdistill.params import Params
from nerdistill.params_reader import provenance
from nerdistill.plots import plot_training
from nerdistill.teacher import stage_teacher
from nerdistill.tracking import is_main_process, tracked_stage
from nerdistill.trainer import train_student


def run(params: Params, data_dir: Path, out_dir: Path, history_csv: Path, components_csv: Path,
        plot_png: Path, checkpoint_dir: Path, resume: bool = False) -> dict:
    train, distill, student_params = params.train, params.distill, params.student
    # The emissions layer and the CRF are initialised before Trainer seeds anything.
    set_seed(params.base.seed)
    teacher, tokenizer = stage_teacher(params)
    data = load_training_data(AnnotatedDir(data_dir), tokenizer, student_params.max_length, params.teacher.stride)
    context = DistillContext.build(data.id2label, student_params.num_layers, teacher.config.id2label,
                                   data.transitions, train.layer_map.pairs(), train.temperature,
                                   Curriculum(distill.phase1_epochs, distill.phase1_weights, distill.phase2_weights))
    student = build_student(teacher, data.id2label, list(student_params.teacher_layers), student_params.dropout,
                            provenance=provenance(params),
                            crf_prior=context.crf_prior() if distill.crf_init == "prior" else None)
    best, result = train_student(student, teacher, context, data, train, distill, params.base.seed,
                                 checkpoint_dir, resume)
    if not is_main_process():
        return result.summary()  # the main process writes the outputs
    save_student(best, tokenizer, out_dir)
    result.write_history(history_csv, pruning_ratio=0.0)
    result.write_components(components_csv)
    plot_training(result.history, plot_png, f"distill: {student_params.num_layers}-layer student")
    return result.summary()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="annotate's output folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for the best student")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--history", type=Path, required=True, help="per-epoch history CSV")
    parser.add_argument("--components", type=Path, required=True, help="per-epoch loss components CSV")
    parser.add_argument("--plot", type=Path, required=True, help="training curves PNG")
    parser.add_argument("--checkpoints", type=Path, required=True, help="Trainer checkpoints (not a DVC output)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint after an interruption")


def main(args: argparse.Namespace, params: Params) -> int:
    tracked_stage("distill", params, args.params, args.metrics, lambda: run(
        params, data_dir=args.data, out_dir=args.out, history_csv=args.history, components_csv=args.components,
        plot_png=args.plot, checkpoint_dir=args.checkpoints, resume=args.resume),
        artifacts=(args.history, args.components, args.plot))
    return 0
