"""finetune: recover the pruned student with the teacher, same Trainer, post-prune loss weights."""
from __future__ import annotations

from pathlib import Path

from nerdistill.annotated import AnnotatedDir
from nerdistill.data import load_training_data
from nerdistill.modeling import CrfStudent, provenance
from nerdistill.params import Params
from nerdistill.plots import plot_training
from nerdistill.teacher import check_against_teacher, load_teacher
from nerdistill.tracking import is_main_process
from nerdistill.trainer import train_stage


def run(params: Params, model_dir: Path, data_dir: Path, out_dir: Path, history_csv: Path, plot_png: Path,
        checkpoint_dir: Path, resume: bool = False) -> dict:
    check_against_teacher(params)
    teacher, tokenizer = load_teacher(params.teacher.model_name)
    student = CrfStudent.from_pretrained(model_dir)
    student.config.provenance = provenance(params, earlier=student.config.provenance)
    data = load_training_data(AnnotatedDir(data_dir), tokenizer, params.student.max_length, params.teacher.stride)
    result = train_stage(params, "finetune", student, teacher, tokenizer, data, checkpoint_dir, resume, out_dir)
    if not is_main_process():
        return result.summary()  # the main process writes the outputs
    result.write_history(history_csv, pruning_ratio=params.pruning.ratio)
    plot_training(result.history, plot_png, f"finetune after pruning {params.pruning.ratio:.0%} of heads")
    return result.summary()
