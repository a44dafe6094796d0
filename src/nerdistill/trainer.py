"""The one transformers.Trainer subclass: distill and finetune train with it, prune scores with it.

Trainer brings gradient accumulation with a schedule sized in optimizer steps, warmup, mixed
precision, multi-GPU (torchrun / accelerate launch), early stopping, checkpoint rotation and
resumption. This module only adds what is ours: the teacher forward (no grad) in the same batch,
the four losses with their curriculum weights, a non-finite loss guard and CRF decoding for
validation F1 (training_history turns its logs into what a stage writes).
"""
from __future__ import annotations

import logging
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from transformers import EarlyStoppingCallback, EvalPrediction, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler

from nerdistill import tracking
from nerdistill.data import TrainingData
from nerdistill.losses import DistillContext, LossParts, distillation_loss
from nerdistill.metrics import entity_scores
from nerdistill.model_folders import check_weights
from nerdistill.modeling import CrfStudent
from nerdistill.params import Schedule, TrainParams
from nerdistill.teacher import teacher_forward
from nerdistill.training_history import COMPONENTS, TrainResult, epoch_history

log = logging.getLogger(__name__)



class TrainingDivergedError(RuntimeError):
    """Too many optimizer steps had a NaN/inf loss."""


def precision_flags(precision: str) -> dict[str, bool]:
    """bf16 where the GPU supports it, else fp16 on GPU; fp32 on CPU unless asked otherwise."""
    on_gpu = torch.cuda.is_available()
    if precision == "auto":
        if not on_gpu:
            return {"bf16": False, "fp16": False}
        return {"bf16": torch.cuda.is_bf16_supported(), "fp16": not torch.cuda.is_bf16_supported()}
    if precision == "fp16" and not on_gpu:
        raise ValueError("train.precision = fp16 needs a CUDA GPU; use auto, fp32 or bf16 on CPU")
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def training_arguments(settings: TrainParams, schedule: Schedule, seed: int, output_dir: Path,
                       logging_steps: int = 10) -> TrainingArguments:
    """The shared Trainer setup (`train:`) with one stage's epochs, learning rate and step cap."""
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=schedule.epochs,
        max_steps=schedule.max_steps,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        learning_rate=schedule.learning_rate,
        weight_decay=settings.weight_decay,
        warmup_steps=settings.warmup_ratio,  # a float < 1 is a fraction of the optimizer steps
        max_grad_norm=settings.max_grad_norm,
        lr_scheduler_type="linear",
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="steps",
        logging_steps=logging_steps,
        logging_first_step=True,
        save_total_limit=settings.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model="f1",
        greater_is_better=True,
        seed=seed,
        data_seed=seed,
        remove_unused_columns=False,
        label_names=["labels"],
        report_to=[],
        # Trainer's own filter reads every micro-step's loss on the host; the loss we hand it is finite.
        logging_nan_inf_filter=False,
        disable_tqdm=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        # Without it, a CPU-only torchrun initialises gloo but each process trains alone.
        use_cpu=not torch.cuda.is_available(),
        **precision_flags(settings.precision),
    )


class DistillTrainer(Trainer):
    """Trainer whose loss is the weighted sum of CE, KD, hidden and CRF losses against a frozen teacher."""

    def __init__(self, *args: Any, teacher: torch.nn.Module, context: DistillContext, max_nonfinite_steps: int,
                 crf_lr_multiplier: float, group_by_length: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # The loss is already a per-batch mean; let Trainer divide it by the accumulation steps.
        self.model_accepts_loss_kwargs = False
        self.teacher = teacher.to(self.args.device).eval()
        self.context = context
        self.max_nonfinite_steps = max_nonfinite_steps
        self.crf_lr_multiplier = crf_lr_multiplier
        self.group_by_length = group_by_length
        # Kept on the device and read only at logging steps: a host read per micro-step would wait
        # for the GPU to finish every step before queueing the next.
        self._component_sums = torch.zeros(len(COMPONENTS), device=self.args.device)
        self._finite_micro_steps = torch.zeros((), device=self.args.device)
        self._pending_nonfinite = torch.zeros((), dtype=torch.bool, device=self.args.device)
        self._nonfinite_steps = torch.zeros((), device=self.args.device)
        self._nonfinite_reported = 0
        self.add_callback(_SkipNonfiniteSteps(self))

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler | None:
        """Trainer's sampler, or with train.group_by_length one drawing batches of windows of similar
        length (in shuffled mega-batches, as Trainer's own grouping), from the dataset's `lengths`
        when it keeps them: a batch is padded to its longest window, and the CRF's recursion runs to
        its longest row."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not self.group_by_length or dataset is None:
            return super()._get_train_sampler(train_dataset)
        lengths = getattr(dataset, "lengths", None)
        if lengths is None:
            lengths = [len(feature["input_ids"]) for feature in dataset]
        return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                    lengths=[int(length) for length in lengths])

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """Trainer's optimizer, with the CRF's scores in a group of their own: learning rate x
        crf_lr_multiplier (the schedule scales every group alike), no weight decay (it would pull the
        transition scores towards "no preference", not towards the prior)."""
        if self.optimizer is not None:
            return self.optimizer
        optimizer = super().create_optimizer(model)
        crf = list(self.accelerator.unwrap_model(model or self.model).crf.parameters())
        for group in optimizer.param_groups:
            group["params"] = [param for param in group["params"] if all(param is not p for p in crf)]
        optimizer.add_param_group({"params": crf, "weight_decay": 0.0,
                                   "lr": self.args.learning_rate * self.crf_lr_multiplier})
        return optimizer

    def compute_loss(self, model: CrfStudent, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        # Training and evaluation use the weights of the epoch being trained, so val loss is comparable:
        # the evaluation that closes epoch 1 runs at state.epoch == 1.0 but scores epoch 1's objective.
        epoch = self.state.epoch or 0.0
        weights = self.context.weights(epoch if model.training else max(0.0, epoch - 1e-6))
        need_hidden = self.context.needs_hidden(weights)
        # The student's forward runs under accelerate's autocast (prepare wraps it); the teacher is not
        # prepared, so it gets the same autocast here, or it would run in fp32 beside a bf16 student.
        with self.accelerator.autocast():
            teacher_logits, teacher_hidden = teacher_forward(self.teacher, inputs, output_hidden_states=need_hidden)
        # Through the wrapper (DDP reduces gradients there), with labels: every loss term's use of the
        # student's parameters happens inside its forward.
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                        word_index=inputs["word_index"], word_mask=inputs["word_mask"], labels=inputs["labels"],
                        starts_line=inputs["starts_line"], ends_line=inputs["ends_line"],
                        output_hidden_states=need_hidden,
                        kd_temperature=self.context.temperature if weights.kd > 0 else None)
        parts = distillation_loss(outputs, teacher_logits, teacher_hidden, inputs, weights, self.context)
        total = self._record(parts) if model.training else parts.total
        return (total, outputs) if return_outputs else total

    def _record(self, parts: LossParts) -> torch.Tensor:
        """The loss to back-propagate: the total, or 0 when it is not finite (that optimizer step is
        then skipped, `_SkipNonfiniteSteps`); its components are summed on the device for the next log."""
        finite = torch.isfinite(parts.total)
        components = torch.stack([getattr(parts, name).detach().float() for name in COMPONENTS])
        self._component_sums += torch.where(finite, components, 0.0)
        self._finite_micro_steps += finite
        self._pending_nonfinite |= ~finite
        return torch.where(finite, parts.total, 0.0)

    @property
    def nonfinite_steps(self) -> int:
        """Optimizer steps skipped so far for a non-finite loss (a host read: call it at logging steps)."""
        return int(self._nonfinite_steps.item())

    def check_nonfinite(self) -> None:
        """Warn about steps skipped since the last check; stop past train.max_nonfinite_steps."""
        skipped = self.nonfinite_steps
        if skipped == self._nonfinite_reported:
            return
        log.warning("%d optimizer step(s) skipped for a non-finite loss by step %d (%d in all)",
                    skipped - self._nonfinite_reported, self.state.global_step, skipped)
        self._nonfinite_reported = skipped
        tracking.log_metrics({"nonfinite_steps": skipped}, step=self.state.global_step)
        if skipped > self.max_nonfinite_steps:
            raise TrainingDivergedError(
                f"{skipped} training steps had a NaN/inf loss (limit train.max_nonfinite_steps="
                f"{self.max_nonfinite_steps}); lower the learning rate, use precision: fp32 or bf16, "
                "or check the teacher's outputs")

    def prediction_step(self, model: CrfStudent, inputs: dict[str, torch.Tensor], prediction_loss_only: bool,
                        ignore_keys: Sequence[str] | None = None) -> tuple:
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        paths = self.accelerator.unwrap_model(model).decode(outputs.emissions, inputs["word_mask"],
                                                            inputs["starts_line"], inputs["ends_line"])
        # Filled on the host, then one copy to the device (Trainer gathers predictions across ranks there).
        predictions = torch.full(inputs["labels"].shape, -100, dtype=torch.long)  # (B, W)
        for row, path in enumerate(paths):
            predictions[row, : len(path)] = torch.tensor(path, dtype=torch.long)
        return loss.detach(), predictions.to(inputs["labels"].device), inputs["labels"]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            self.check_nonfinite()
            counted = float(self._finite_micro_steps.item())
            if counted:
                means = (self._component_sums / counted).tolist()
                logs.update({f"loss_{name}": mean for name, mean in zip(COMPONENTS, means)})
            self._component_sums.zero_()
            self._finite_micro_steps.zero_()
        super().log(logs, start_time)


class _SkipNonfiniteSteps(TrainerCallback):
    """Skips an optimizer step when any micro-step of it, on any rank, had a non-finite loss: its
    gradients (NaN, or clipped to NaN) are zeroed on the device, without a host read. As before this
    guard existed, AdamW still moves by its momentum on a zeroed step; the learning-rate schedule goes on.
    The count is read at logging steps and at the end (`DistillTrainer.check_nonfinite`)."""

    def __init__(self, trainer: DistillTrainer) -> None:
        self.trainer = trainer

    def on_pre_optimizer_step(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        trainer = self.trainer
        bad = trainer._pending_nonfinite.float()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Ranks that disagreed would step different weights apart.
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        skip = bad.bool()
        for param in trainer.model.parameters():
            if param.grad is not None:
                param.grad.masked_fill_(skip, 0.0)
        trainer._nonfinite_steps += bad
        trainer._pending_nonfinite.zero_()


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


def train_student(student: CrfStudent, teacher: torch.nn.Module, context: DistillContext, data: TrainingData,
                  settings: TrainParams, schedule: Schedule, seed: int, checkpoint_dir: Path, resume: bool
                  ) -> tuple[CrfStudent, TrainResult]:
    """Train with early stopping on val F1; returns the best model (loaded back by Trainer)."""
    steps_per_epoch = math.ceil(len(data.train) / (settings.batch_size * settings.gradient_accumulation_steps))
    trainer = DistillTrainer(
        model=student, args=training_arguments(settings, schedule, seed, checkpoint_dir,
                                               logging_steps=max(1, min(50, steps_per_epoch // 4))),
        train_dataset=data.train, eval_dataset=data.val, data_collator=data.collator,
        compute_metrics=seqeval_metrics(student.config.id2label),
        callbacks=[EarlyStoppingCallback(settings.early_stopping_patience, settings.early_stopping_threshold),
                   MlflowStepCallback()],
        teacher=teacher, context=context, max_nonfinite_steps=settings.max_nonfinite_steps,
        crf_lr_multiplier=settings.crf_lr_multiplier, group_by_length=settings.group_by_length)
    resume_from = _last_checkpoint(checkpoint_dir) if resume else None
    if resume_from is not None:
        check_weights(Path(resume_from), "delete that checkpoint folder to resume from the one before it, "
                                         "or run without --resume")
    if resume and resume_from is None:
        log.warning("--resume: no checkpoint in %s, training from the start", checkpoint_dir)
    elif resume_from is not None:
        log.info("--resume: continuing from %s", resume_from)
    if not resume and checkpoint_dir.exists() and tracking.is_main_process():
        # Checkpoints of an earlier run with other params would mix into rotation and best-model tracking.
        shutil.rmtree(checkpoint_dir)
    output = trainer.train(resume_from_checkpoint=resume_from)
    trainer.check_nonfinite()
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


class Scorer:
    """The Trainer's own loss and validation F1 on a model that is not being trained (prune scores
    heads with the first and checks the pruned model with the second)."""

    def __init__(self, student: CrfStudent, teacher: torch.nn.Module, context: DistillContext, data: TrainingData,
                 batch_size: int, seed: int) -> None:
        self._scratch = tempfile.TemporaryDirectory(prefix="nerdistill-scorer-")
        settings = TrainParams(batch_size=batch_size, precision="fp32")
        self.trainer = DistillTrainer(
            model=student, args=training_arguments(settings, Schedule(), seed, Path(self._scratch.name)),
            eval_dataset=data.val, data_collator=data.collator,
            compute_metrics=seqeval_metrics(student.config.id2label),
            teacher=teacher, context=context, max_nonfinite_steps=0, crf_lr_multiplier=settings.crf_lr_multiplier)

    def loss(self, model: CrfStudent, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.trainer.compute_loss(model, batch)

    def val_f1(self) -> float:
        return float(self.trainer.evaluate()["eval_f1"])


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
