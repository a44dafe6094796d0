"""finetune: recover the pruned student with the teacher, same Trainer, post-prune loss weights."""
from __future__ import annotations

import logging
from pathlib import Path

from nerdistill import training
from nerdistill.modeling import CrfStudent, check_against_teacher, load_teacher
from nerdistill.params import Params
from nerdistill.plots import plot_training

log = logging.getLogger(__name__)


def run(params: Params, model_dir: Path, data_dir: Path, out_dir: Path, history_csv: Path, plot_png: Path,
        checkpoint_dir: Path, resume: bool = False) -> dict:
    check_against_teacher(params)
    teacher, tokenizer = load_teacher(params.teacher.model_name)
    student = CrfStudent.from_pretrained(model_dir)
    data = training.load_training_data(data_dir, tokenizer, params.student.max_length, params.teacher.stride)
    weights = params.finetune.weights
    best, result = training.fit(student, teacher, data, params, training.finetune_config(params),
                                lambda epoch: weights, checkpoint_dir, resume)
    training.save_student(best, tokenizer, out_dir)
    training.write_history(result.history, history_csv, pruning_ratio=params.pruning.ratio)
    plot_training(result.history, plot_png, f"finetune after pruning {params.pruning.ratio:.0%} of heads")
    return training.summary(result)
