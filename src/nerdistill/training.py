"""What distill and finetune share around the Trainer: data loading, the loss context, saving the
best student and writing its history (the seeds' CSV format), components CSV and plot."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from nerdistill.data import NerCollator, WordTokenizer, features, load_split
from nerdistill.io import atomic_dir, read_json, write_csv
from nerdistill.labels import entity_types
from nerdistill.losses import DistillContext
from nerdistill.modeling import CrfStudent
from nerdistill.params import Params, Weights
from nerdistill.trainer import COMPONENTS, TrainConfig, TrainResult, train_student

log = logging.getLogger(__name__)

HISTORY_HEADER = ("epoch", "train_loss", "val_loss", "val_f1", "val_precision", "val_recall", "lr", "pruning_ratio")


@dataclass
class TrainingData:
    train: list[dict]
    val: list[dict]
    collator: NerCollator
    id2label: dict[int, str]
    transitions: dict[str, Any]


def load_training_data(data_dir: Path, tokenizer: Any, max_length: int, stride: int) -> TrainingData:
    label2id = read_json(data_dir / "label2id.json")
    words = WordTokenizer(tokenizer, max_length, stride)
    train = features(load_split(data_dir / "train.jsonl"), words, label2id)
    val = features(load_split(data_dir / "val.jsonl"), words, label2id)
    if not train or not val:
        raise ValueError(f"{data_dir}: the train and val splits must both hold phrases "
                         f"(train {len(train)}, val {len(val)}); annotate a larger corpus or change annotate.split")
    log.info("training features: %d train, %d val windows", len(train), len(val))
    return TrainingData(train=train, val=val, collator=NerCollator(tokenizer.pad_token_id),
                        id2label={int(i): name for name, i in label2id.items()},
                        transitions=read_json(data_dir / "transitions.json"))


def distill_config(params: Params) -> TrainConfig:
    d = params.distill
    return TrainConfig(
        epochs=d.epochs, batch_size=d.batch_size, learning_rate=d.learning_rate,
        gradient_accumulation_steps=d.gradient_accumulation_steps, weight_decay=d.weight_decay,
        warmup_ratio=d.warmup_ratio, max_grad_norm=d.max_grad_norm,
        early_stopping_patience=d.early_stopping_patience, early_stopping_threshold=d.early_stopping_threshold,
        save_total_limit=d.save_total_limit, max_nonfinite_steps=d.max_nonfinite_steps, max_steps=d.max_steps,
        precision=d.precision, seed=params.base.seed)


def finetune_config(params: Params) -> TrainConfig:
    """The distill knobs, with finetune's own epochs, batch size, learning rate and step cap."""
    f = params.finetune
    return dataclasses.replace(distill_config(params), epochs=f.epochs, batch_size=f.batch_size,
                               learning_rate=f.learning_rate, max_steps=f.max_steps)


def loss_context(student: CrfStudent, teacher: torch.nn.Module, transitions: dict[str, Any],
                 params: Params) -> DistillContext:
    teacher_labels = teacher.config.id2label
    # Teacher types the student does not keep (annotate.drop_types) fold into O in the KD space.
    dropped = set(entity_types(teacher_labels.values())) - set(entity_types(student.config.id2label.values()))
    return DistillContext.build(student, teacher_labels, dropped, transitions,
                                params.distill.layer_map.pairs(), params.distill.temperature,
                                device=next(student.parameters()).device)


def fit(student: CrfStudent, teacher: torch.nn.Module, data: TrainingData, params: Params,
        config: TrainConfig, weights_for_epoch: Callable[[float], Weights], checkpoint_dir: Path,
        resume: bool) -> tuple[CrfStudent, TrainResult]:
    context = loss_context(student, teacher, data.transitions, params)
    return train_student(student, teacher, context, data.train, data.val, data.collator, config,
                         weights_for_epoch, checkpoint_dir, resume)


def save_student(student: CrfStudent, tokenizer: Any, out_dir: Path) -> None:
    """Model and tokenizer side by side, swapped in whole so DVC never caches a half-written folder."""
    with atomic_dir(out_dir) as staging:
        student.save_pretrained(staging)
        tokenizer.save_pretrained(staging)


def write_history(rows: list[dict[str, float]], path: Path, pruning_ratio: float) -> None:
    write_csv(path, HISTORY_HEADER,
              ([row["epoch"], *(row[k] for k in HISTORY_HEADER[1:-1]), pruning_ratio] for row in rows))


def write_components(rows: list[dict[str, float]], path: Path) -> None:
    write_csv(path, ("epoch", *COMPONENTS, "total"),
              ([row["epoch"], *(row[name] for name in COMPONENTS), row["train_loss"]] for row in rows))


def summary(result: TrainResult) -> dict[str, Any]:
    """The stage's metrics: the best epoch's validation figures and how training went."""
    return {"best_epoch": result.best_epoch, "best_val_f1": result.best_val_f1,
            "best_val_loss": result.best_val_loss, "epochs_run": result.epochs_run,
            "optimizer_steps": result.optimizer_steps, "nonfinite_steps": result.nonfinite_steps,
            "train_runtime_s": result.train_runtime, "train_samples_per_s": result.train_samples_per_second}
