"""Every PNG the stages write (training curves, head importance, confusion, latency), for offline eyes:
dvc.yaml declares them as image plots beside the CSVs its vega templates draw (a CDN away). Also the
report's Pareto front."""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from nerdistill.io import save_figure, write_csv  # noqa: E402

if TYPE_CHECKING:
    import torch

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


def plot_importance(importance: torch.Tensor, keep: Mapping[int, list[int]], ffn_before: Sequence[int],
                    ffn_after: Sequence[int], path: str | Path) -> None:
    """Left: heatmap of head importance (layers x heads), pruned heads crossed out. Right: FFN
    neurons per layer before and after pruning."""
    layers, heads = importance.shape
    fig, (ax, ffn_ax) = plt.subplots(1, 2, figsize=(8.0 + 0.5 * heads, 1.5 + 0.4 * layers),
                                     gridspec_kw={"width_ratios": [3.0 + 0.5 * heads, 5.0]})
    image = ax.imshow(importance.numpy(), cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax, label="importance (L2-normalised per layer)")
    for layer in range(layers):
        for head in range(heads):
            if not math.isnan(float(importance[layer, head])) and head not in keep.get(layer, range(heads)):
                ax.scatter(head, layer, marker="x", s=120, c="red", linewidths=2)
    ax.set_xticks(range(heads))
    ax.set_yticks(range(layers))
    ax.set_xlabel("head (index in the model pruned)")
    ax.set_ylabel("layer (0-based)")
    ax.set_title("Attention head importance (x = pruned)")
    ffn_ax.barh(range(layers), ffn_before, color="lightgrey", label="before")
    ffn_ax.barh(range(layers), ffn_after, color="tab:green", label="kept")
    for layer, kept in enumerate(ffn_after):
        ffn_ax.text(kept, layer, f" {kept}", va="center", fontsize=8)
    ffn_ax.set(yticks=range(layers), ylim=(layers - 0.5, -0.5), xlabel="FFN neurons",
               title="FFN neurons kept per layer")
    ffn_ax.legend(loc="lower right", fontsize=8)
    save_figure(fig, path)


def plot_confusion(types: list[str], matrix: list[list[int]], path: Path, title: str) -> None:
    """Counts in the cells, colour = share of the reference row, so rare types stay readable."""
    shares = [[count / max(1, sum(row)) for count in row] for row in matrix]
    fig, ax = plt.subplots(figsize=(1.2 * len(types) + 2, 1.1 * len(types) + 1.5))
    ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", color="white" if shares[i][j] > 0.5 else "black")
    ax.set(xticks=range(len(types)), xticklabels=types, yticks=range(len(types)), yticklabels=types,
           xlabel="predicted type", ylabel="reference type", title=title)
    save_figure(fig, path)


LATENCY_CSV_HEADER = ("model_variant", "workload", "p50_ms", "p95_ms", "unstable")
WORKLOADS = ("doc", "phrase")


def plot_latency(results: dict, path: Path, metrics: dict) -> None:
    """p50 bars with p95 whiskers, per model variant, for the document and the median phrase; the variants
    bench flagged unstable (metrics' `unstable`) hatched and marked, their figures not to be judged.

    The bars' figures also go to the CSV beside the PNG (`latency.csv` for `latency.png`), one row per
    variant and workload: what dvc.yaml's vega template draws, revision beside revision, in `dvc plots diff`."""
    unstable = set(metrics.get("unstable", []))
    write_csv(Path(path).with_suffix(".csv"), LATENCY_CSV_HEADER,
              [(f"{name} {variant}", workload, figures[f"{workload}_p50_ms"], figures[f"{workload}_p95_ms"],
                f"{name}:{variant}" in unstable)
               for name, model in results.items() for variant, figures in model["variants"].items()
               for workload in WORKLOADS])
    rows = [(f"{name} {variant}", figures, f"{name}:{variant}" in unstable)
            for name, model in results.items() for variant, figures in model["variants"].items()]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.5 * len(rows) + 2), sharey=True)
    titles = {"doc": f"document (~{metrics['doc_subtokens']} sub-tokens)",
              "phrase": f"median phrase ({metrics['phrase_words']} words)"}
    for ax, (workload, title) in zip(axes, titles.items()):
        p50 = [figures[f"{workload}_p50_ms"] for _, figures, _ in rows]
        p95 = [figures[f"{workload}_p95_ms"] for _, figures, _ in rows]
        bars = ax.barh(range(len(rows)), p50, xerr=[[0] * len(rows), [b - a for a, b in zip(p50, p95)]], capsize=3)
        for bar, (_, _, flagged) in zip(bars, rows):
            if flagged:
                bar.set(hatch="//", alpha=0.4, edgecolor="black")
        ax.set(title=f"{title}, batch 1", xlabel="latency ms (bar p50, whisker p95)",
               yticks=range(len(rows)), yticklabels=[label + " (unstable)" * flagged for label, _, flagged in rows])
    axes[0].invert_yaxis()  # models top to bottom in the order given, the teacher first
    fig.suptitle(f"{metrics['threads']} CPU threads; {metrics['repeats']} interleaved rounds")
    if unstable:
        fig.supxlabel(f"hatched (unstable): document p95/p50 > {metrics['max_spread']:g} after {metrics['retries']} "
                      "re-measurements, the machine was busy: flagged, not judged", color="darkred")
    save_figure(fig, path)


class FrontPoint(Protocol):
    """A point of the Pareto front (front.Point), as this module draws it."""
    name: str
    label: str
    f1: float
    costs: Mapping[str, float]


def plot_front(points: Sequence[FrontPoint], fronts: Mapping[str, Sequence[FrontPoint]],
               teacher: Sequence[FrontPoint], basis: str, axes_titles: Mapping[str, tuple[str, str]],
               path: str | Path, recommended: FrontPoint | None = None,
               f1_bound: tuple[float, str] | None = None) -> None:
    """F1 against each cost (key -> (title, unit)), a panel per cost, about 1,400 px wide in all: the
    front's points in colour and joined, the dominated ones grey, every point labelled; the teacher's
    variants in red, the recommended point ringed, the gate's F1 bound (value, caption) dashed. Costs
    on log axes: a student is often 10-100x cheaper than the teacher, and a linear axis would crowd
    every student into its left tenth."""
    fig, axes = plt.subplots(1, len(axes_titles), figsize=(6.3 * len(axes_titles), 5.2), squeeze=False)
    for ax, (key, (title, unit)) in zip(axes[0], axes_titles.items()):
        best = fronts[key]
        dominated = [p for p in points if p not in best]
        ax.scatter([p.costs[key] for p in dominated], [p.f1 for p in dominated], c="#9a9a9a", s=30,
                   label="dominated")
        ax.plot([p.costs[key] for p in best], [p.f1 for p in best], "o-", c="tab:blue", ms=7, label="front")
        for index, p in enumerate(points):
            # Alternate above and below so that neighbours' labels do not print over each other.
            ax.annotate(_point_label(p), (p.costs[key], p.f1), textcoords="offset points",
                        xytext=(6, 6 if index % 2 == 0 else -12), fontsize=8,
                        color="tab:blue" if p in best else "#555555")
        # fp32 above, int8 below: both teachers often share a size.
        for p, (marker, size, dy) in zip(teacher, (("*", 220, 8), ("D", 60, -14))):
            ax.scatter([p.costs[key]], [p.f1], marker=marker, s=size, c="tab:red", alpha=0.7, label=p.name)
            ax.annotate(p.name, (p.costs[key], p.f1), textcoords="offset points", xytext=(-8, dy), ha="right",
                        fontsize=8, color="tab:red")
        if recommended is not None:
            ax.scatter([recommended.costs[key]], [recommended.f1], s=320, facecolors="none", edgecolors="tab:green",
                       linewidths=2.5, label=f"recommended: {recommended.name}")
        if f1_bound is not None:
            ax.axhline(f1_bound[0], ls="--", c="tab:red", lw=1, alpha=0.7, label=f1_bound[1])
        _log_cost_axis(ax, unit)
        ax.set(xlabel=f"{title} (log scale)", ylabel=f"F1 ({basis})", title=f"F1 against {title}")
        ax.grid(alpha=0.3, which="both")
    # One legend under the panels, where it hides no point.
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    save_figure(fig, path)


def _point_label(point: FrontPoint) -> str:
    # A sweep names its points by their params (L3-h25); another experiment's name says nothing of them.
    return point.name if point.label in ("", point.name) else f"{point.name} ({point.label})"


def _log_cost_axis(ax: Any, unit: str) -> None:
    from matplotlib.ticker import EngFormatter, FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    # Ticks at 1, 2 and 5 of each decade: a front within one decade still gets several labelled ticks.
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(EngFormatter(unit=unit) if unit == "B" else FuncFormatter(
        lambda value, _: f"{value:g} {unit}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
