"""distill: build the CRF student from the teacher and train it with four-loss Patient KD."""
from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

from transformers import set_seed

from nerdistill import training
from nerdistill.losses import phase_weights
from nerdistill.modeling import build_student, check_against_teacher, init_transitions, load_teacher
from nerdistill.params import Params
from nerdistill.plots import plot_training

log = logging.getLogger(__name__)


def run(params: Params, data_dir: Path, out_dir: Path, history_csv: Path, components_csv: Path,
        plot_png: Path, checkpoint_dir: Path, resume: bool = False) -> dict:
    check_against_teacher(params)
    # The emissions layer and the CRF are initialised before Trainer seeds anything.
    set_seed(params.base.seed)
    teacher, tokenizer = load_teacher(params.teacher.model_name)
    data = training.load_training_data(data_dir, tokenizer, params.student.max_length, params.teacher.stride)
    student = build_student(
        teacher, data.id2label, list(params.student.teacher_layers), params.student.dropout,
        provenance={"teacher": params.teacher.model_name, "teacher_layers": list(params.student.teacher_layers),
                    "layer_map": params.as_dict()["distill"]["layer_map"], "params": params.flat()})
    init_transitions(student, data.transitions)
    weights = partial(phase_weights, phase1_epochs=params.distill.phase1_epochs,
                      phase1=params.distill.phase1_weights, phase2=params.distill.phase2_weights)
    best, result = training.fit(student, teacher, data, params, training.distill_config(params), weights,
                                checkpoint_dir, resume)
    training.save_student(best, tokenizer, out_dir)
    training.write_history(result.history, history_csv, pruning_ratio=0.0)
    training.write_components(result.history, components_csv)
    plot_training(result.history, plot_png, f"distill: {params.student.num_layers}-layer student")
    return training.summary(result)
