"""distill: build the CRF student from the teacher and train it with four-loss Patient KD."""
from __future__ import annotations

from pathlib import Path

from transformers import set_seed

from nerdistill.annotated import AnnotatedDir
from nerdistill.data import load_training_data
from nerdistill.modeling import build_student, init_crf_from_prior, provenance
from nerdistill.params import Params
from nerdistill.plots import plot_training
from nerdistill.teacher import check_against_teacher, load_teacher
from nerdistill.tracking import is_main_process
from nerdistill.trainer import train_stage


def run(params: Params, data_dir: Path, out_dir: Path, history_csv: Path, components_csv: Path,
        plot_png: Path, checkpoint_dir: Path, resume: bool = False) -> dict:
    check_against_teacher(params)
    # The emissions layer and the CRF are initialised before Trainer seeds anything.
    set_seed(params.base.seed)
    teacher, tokenizer = load_teacher(params.teacher.model_name)
    data = load_training_data(AnnotatedDir(data_dir), tokenizer, params.student.max_length, params.teacher.stride)
    student = build_student(teacher, data.id2label, list(params.student.teacher_layers), params.student.dropout,
                            provenance=provenance(params))
    if params.distill.crf_init == "prior":
        init_crf_from_prior(student, data.transitions)
    result = train_stage(params, "distill", student, teacher, tokenizer, data, checkpoint_dir, resume, out_dir)
    if not is_main_process():
        return result.summary()  # the main process writes the outputs
    result.write_history(history_csv, pruning_ratio=0.0)
    result.write_components(components_csv)
    plot_training(result.history, plot_png, f"distill: {params.student.num_layers}-layer student")
    return result.summary()
