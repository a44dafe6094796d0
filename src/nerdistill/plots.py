"""Training curves as PNG: DVC declares them as image plots, since vega HTML needs a CDN offline."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from nerdistill.io import save_figure  # noqa: E402

COMPONENT_NAMES = ("ce", "kd", "hidden", "crf")


def plot_training(rows: Sequence[dict[str, float]], path: str | Path, title: str) -> None:
    """Three panels per epoch: train/val loss, val P/R/F1, and the weighted-in loss components."""
    epochs = [row["epoch"] for row in rows]
    fig, (loss_ax, f1_ax, comp_ax) = plt.subplots(1, 3, figsize=(15, 4))
    loss_ax.plot(epochs, [r["train_loss"] for r in rows], marker="o", label="train")
    loss_ax.plot(epochs, [r["val_loss"] for r in rows], marker="o", label="val")
    loss_ax.set(title="loss", xlabel="epoch")
    loss_ax.legend()
    for key in ("val_f1", "val_precision", "val_recall"):
        f1_ax.plot(epochs, [r[key] for r in rows], marker="o", label=key.removeprefix("val_"))
    f1_ax.set(title="val entity scores (strict IOB2, vs teacher)", xlabel="epoch", ylim=(0, 1.02))
    f1_ax.legend()
    for name in COMPONENT_NAMES:
        comp_ax.plot(epochs, [r[name] for r in rows], marker="o", label=name)
    comp_ax.set(title="train loss components (unweighted)", xlabel="epoch", yscale="log")
    comp_ax.legend()
    fig.suptitle(title)
    save_figure(fig, path)
