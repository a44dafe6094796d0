"""What a training stage writes from the Trainer's logs: the per-epoch history (the seeds' CSV
format), the loss components CSV and the stage's summary metrics."""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nerdistill.io import write_csv

COMPONENTS = ("ce", "kd", "hidden", "crf")
# The components CSV names each term with its unit (losses.py): unweighted means on those scales.
COMPONENT_COLUMNS = ("ce_per_word", "kd_per_word_x_T2", "hidden_per_subtoken_and_layer_pair", "crf_per_transition")
HISTORY_HEADER = ("epoch", "train_loss", "val_loss", "val_f1", "val_precision", "val_recall", "lr", "pruning_ratio")


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

    def summary(self) -> dict[str, Any]:
        """The stage's metrics: the best epoch's validation figures and how training went."""
        return {"best_epoch": self.best_epoch, "best_val_f1": self.best_val_f1,
                "best_val_loss": self.best_val_loss, "epochs_run": self.epochs_run,
                "optimizer_steps": self.optimizer_steps, "nonfinite_steps": self.nonfinite_steps,
                "train_runtime_s": self.train_runtime, "train_samples_per_s": self.train_samples_per_second}

    def write_history(self, path: Path, pruning_ratio: float) -> None:
        write_csv(path, HISTORY_HEADER,
                  ([row["epoch"], *(row[k] for k in HISTORY_HEADER[1:-1]), pruning_ratio] for row in self.history))

    def write_components(self, path: Path) -> None:
        write_csv(path, ("epoch", *COMPONENT_COLUMNS, "total"),
                  ([row["epoch"], *(row[name] for name in COMPONENTS), row["train_loss"]] for row in self.history))
