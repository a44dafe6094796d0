"""The one transformers.Trainer subclass, shared by distill and finetune.

Trainer brings gradient accumulation with a schedule sized in optimizer steps, warmup, mixed
precision, multi-GPU (torchrun / accelerate launch), early stopping, checkpoint rotation and
resumption. This module only adds what is ours: the teacher forward (no grad) in the same batch, the four
losses with their curriculum weights, a non-finite loss guard, CRF decoding for validation F1,
and per-epoch history for DVC plots.
"""
from __future__ import annotations

import logging
import math
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from transformers import EarlyStoppingCallback, EvalPrediction, Trainer, TrainerCallback, TrainingArguments

from nerdistill import tracking
from nerdistill.losses import DistillContext, distillation_loss
from nerdistill.metrics import entity_scores
from nerdistill.modeling import CrfStudent, teacher_forward
from nerdistill.params import Weights

log = logging.getLogger(__name__)

COMPONENTS = ("ce", "kd", "hidden", "crf")


class TrainingDivergedError(RuntimeError):
    """Too many optimizer steps had a NaN/inf loss."""


@dataclass(frozen=True)
class TrainConfig:
    """The training knobs distill and finetune share, resolved from their params sections."""
    epochs: int
    batch_size: int
    learning_rate: float
    gradient_accumulation_steps: int
    weight_decay: float
    warmup_ratio: float
    max_grad_norm: float
    early_stopping_patience: int
    early_stopping_threshold: float
    save_total_limit: int
    max_nonfinite_steps: int
    max_steps: int
    precision: str
    seed: int


def epoch_history(log_history: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Per-epoch rows from Trainer's log history (restored from checkpoints, so a resumed run
    keeps its earlier epochs): means of the logged training losses, the validation figures, last lr."""
    train: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    last_lr: dict[int, float] = {}
    val: dict[int, dict[str, float]] = {}
    for entry in log_history:
        if "epoch" not in entry:
            continue
        if "eval_loss" in entry:
            val[max(1, round(entry["epoch"]))] = {
                "val_loss": entry["eval_loss"], "val_f1": entry.get("eval_f1", float("nan")),
                "val_precision": entry.get("eval_precision", float("nan")),
                "val_recall": entry.get("eval_recall", float("nan"))}
        elif "loss" in entry:
            # A log at fractional epoch 0.4 belongs to epoch 1; one at exactly 1.0 closes epoch 1.
            epoch = max(1, math.ceil(entry["epoch"] - 1e-9))
            train[epoch]["total"].append(entry["loss"])
            for name in COMPONENTS:
                if f"loss_{name}" in entry:
                    train[epoch][name].append(entry[f"loss_{name}"])
            if "learning_rate" in entry:
                last_lr[epoch] = entry["learning_rate"]
    rows = []
    for epoch in sorted(val):
        means = {name: float(np.mean(values)) for name, values in train.get(epoch, {}).items()}
        rows.append({"epoch": epoch, "train_loss": means.get("total", float("nan")),
                     **{name: means.get(name, float("nan")) for name in COMPONENTS},
                     **val[epoch], "lr": last_lr.get(epoch, float("nan"))})
    return rows


def precision_flags(precision: str) -> dict[str, bool]:
    """bf16 where the GPU supports it, else fp16 on GPU; fp32 on CPU unless asked otherwise."""
    on_gpu = torch.cuda.is_available()
    if precision == "auto":
        if not on_gpu:
            return {"bf16": False, "fp16": False}
        return {"bf16": torch.cuda.is_bf16_supported(), "fp16": not torch.cuda.is_bf16_supported()}
    if precision == "fp16" and not on_gpu:
        raise ValueError("distill.precision = fp16 needs a CUDA GPU; use auto, fp32 or bf16 on CPU")
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def training_arguments(config: TrainConfig, output_dir: Path, logging_steps: int = 10) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio,  # a float < 1 is a fraction of the optimizer steps
        max_grad_norm=config.max_grad_norm,
        lr_scheduler_type="linear",
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="steps",
        logging_steps=logging_steps,
        logging_first_step=True,
        save_total_limit=config.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model="f1",
        greater_is_better=True,
        seed=config.seed,
        data_seed=config.seed,
        remove_unused_columns=False,
        label_names=["labels"],
        report_to=[],
        disable_tqdm=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        **precision_flags(config.precision),
    )


class DistillTrainer(Trainer):
    """Trainer whose loss is the weighted sum of CE, KD, hidden and CRF losses against a frozen teacher."""

    def __init__(self, *args: Any, teacher: torch.nn.Module, context: DistillContext,
                 weights_for_epoch: Callable[[float], Weights], max_nonfinite_steps: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # The loss is already a per-batch mean; let Trainer divide it by the accumulation steps.
        self.model_accepts_loss_kwargs = False
        self.teacher = teacher.to(self.args.device).eval()
        self.context = context
        self.weights_for_epoch = weights_for_epoch
        self.max_nonfinite_steps = max_nonfinite_steps
        self.nonfinite_steps = 0
        self._since_log: dict[str, list[float]] = defaultdict(list)

    def compute_loss(self, model: CrfStudent, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        # Training and evaluation use the weights of the epoch being trained, so val loss is comparable.
        weights = self.weights_for_epoch(self.state.epoch or 0.0)
        need_hidden = self.context.needs_hidden(weights)
        teacher_logits, teacher_hidden = teacher_forward(self.teacher, inputs, output_hidden_states=need_hidden)
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                        word_index=inputs["word_index"], word_mask=inputs["word_mask"],
                        output_hidden_states=need_hidden)
        parts = distillation_loss(model, outputs, teacher_logits, teacher_hidden, inputs, weights, self.context)
        total = parts.total
        if model.training:
            total = self._guard_nonfinite(total)
            if torch.isfinite(parts.total):
                for name in COMPONENTS:
                    self._since_log[name].append(float(getattr(parts, name).detach()))
        return (total, outputs) if return_outputs else total

    def _guard_nonfinite(self, total: torch.Tensor) -> torch.Tensor:
        if torch.isfinite(total):
            return total
        self.nonfinite_steps += 1
        log.warning("non-finite loss at step %d (%d so far): step skipped", self.state.global_step,
                    self.nonfinite_steps)
        tracking.log_metrics({"nonfinite_steps": self.nonfinite_steps}, step=self.state.global_step)
        if self.nonfinite_steps > self.max_nonfinite_steps:
            raise TrainingDivergedError(
                f"{self.nonfinite_steps} training steps had a NaN/inf loss (limit distill.max_nonfinite_steps="
                f"{self.max_nonfinite_steps}); lower the learning rate, use precision: fp32 or bf16, "
                "or check the teacher's outputs")
        # A graph-free zero backpropagates nothing, so this micro-batch leaves the weights alone.
        return torch.zeros((), device=total.device, requires_grad=True)

    def prediction_step(self, model: CrfStudent, inputs: dict[str, torch.Tensor], prediction_loss_only: bool,
                        ignore_keys: Sequence[str] | None = None) -> tuple:
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        paths = model.decode(outputs.emissions, inputs["word_mask"])
        predictions = torch.full_like(inputs["labels"], -100)  # (B, W)
        for row, path in enumerate(paths):
            predictions[row, : len(path)] = torch.tensor(path, device=predictions.device)
        return loss.detach(), predictions, inputs["labels"]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._since_log:
            logs.update({f"loss_{name}": float(np.mean(values)) for name, values in self._since_log.items()})
            self._since_log.clear()
        super().log(logs, start_time)


class MlflowStepCallback(TrainerCallback):
    """Mirrors every Trainer log (loss, each component, lr, grad norm, eval figures) to the stage run."""

    def on_log(self, args: TrainingArguments, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if logs:
            tracking.log_metrics({k: v for k, v in logs.items() if isinstance(v, (int, float))},
                                 step=state.global_step)


def seqeval_metrics(id2label: dict[int, str]) -> Callable[[EvalPrediction], dict[str, float]]:
    """compute_metrics for Trainer: strict IOB2 entity F1 over real words (label != -100)."""

    def compute(prediction: EvalPrediction) -> dict[str, float]:
        gold_tags, pred_tags = [], []
        for pred_row, gold_row in zip(prediction.predictions, prediction.label_ids):
            keep = gold_row != -100
            gold_tags.append([id2label[int(i)] for i in gold_row[keep]])
            pred_tags.append([id2label[int(i)] if i >= 0 else "O" for i in pred_row[keep]])
        scores = entity_scores(gold_tags, pred_tags)
        return {"f1": scores["f1"], "precision": scores["precision"], "recall": scores["recall"]}

    return compute


@dataclass
class TrainResult:
    best_epoch: int
    best_val_f1: float
    best_val_loss: float
    train_runtime: float
    train_samples_per_second: float
    nonfinite_steps: int
    epochs_run: int
    optimizer_steps: int
    final_learning_rate: float
    history: list[dict[str, float]]


def train_student(student: CrfStudent, teacher: torch.nn.Module, context: DistillContext,
                  train_features: list[dict], val_features: list[dict], collator: Callable,
                  config: TrainConfig, weights_for_epoch: Callable[[float], Weights],
                  checkpoint_dir: Path, resume: bool) -> tuple[CrfStudent, TrainResult]:
    """Train with early stopping on val F1; returns the best model (loaded back by Trainer)."""
    steps_per_epoch = math.ceil(len(train_features) / (config.batch_size * config.gradient_accumulation_steps))
    trainer = DistillTrainer(
        model=student, args=training_arguments(config, checkpoint_dir, logging_steps=max(1, min(50, steps_per_epoch // 4))),
        train_dataset=train_features,
        eval_dataset=val_features, data_collator=collator,
        compute_metrics=seqeval_metrics(student.config.id2label),
        callbacks=[EarlyStoppingCallback(config.early_stopping_patience, config.early_stopping_threshold),
                   MlflowStepCallback()],
        teacher=teacher, context=context, weights_for_epoch=weights_for_epoch,
        max_nonfinite_steps=config.max_nonfinite_steps)
    resume_from = _last_checkpoint(checkpoint_dir) if resume else None
    if resume and resume_from is None:
        log.warning("--resume: no checkpoint in %s, training from the start", checkpoint_dir)
    elif resume_from is not None:
        log.info("--resume: continuing from %s", resume_from)
    if not resume and checkpoint_dir.exists():
        # Checkpoints of an earlier run with other params would mix into rotation and best-model tracking.
        shutil.rmtree(checkpoint_dir)
    output = trainer.train(resume_from_checkpoint=resume_from)
    history = epoch_history(trainer.state.log_history)
    best_epoch, best = _best_epoch(history)
    result = TrainResult(
        best_epoch=best_epoch, best_val_f1=best.get("val_f1", float("nan")),
        best_val_loss=best.get("val_loss", float("nan")), train_runtime=output.metrics["train_runtime"],
        train_samples_per_second=output.metrics["train_samples_per_second"],
        nonfinite_steps=trainer.nonfinite_steps, epochs_run=len(history),
        optimizer_steps=trainer.state.global_step, final_learning_rate=trainer.lr_scheduler.get_last_lr()[0],
        history=history)
    return trainer.model, result


def _last_checkpoint(checkpoint_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    if not checkpoint_dir.is_dir():
        return None
    return get_last_checkpoint(str(checkpoint_dir))


def _best_epoch(history: list[dict[str, float]]) -> tuple[int, dict[str, float]]:
    """The epoch Trainer kept: highest val F1, the earliest on ties."""
    if not history:
        raise RuntimeError("training finished without a single evaluation; is the val split empty?")
    best = max(history, key=lambda row: (row["val_f1"], -row["epoch"]))
    return int(best["epoch"]), best
