"""Which attention heads and FFN neurons matter, and which to remove (`pruning` removes them).

- `HeadGates` multiplies each head's output by a gate, `NeuronGates` each FFN (intermediate)
  neuron's activation, through forward pre-hooks on the layer's output projections
  (`attention.output.dense`, `output.dense`). Gating the attention output, not the attention
  probabilities, works with SDPA and flash attention, which never expose the probabilities.
- `score` is the gradient of both gate sets, one gate per example, from one backward pass per
  batch (Michel et al., 2019, "Are Sixteen Heads Really Better than One?", for heads; the same
  grad x activation score for neurons): the mean over examples of |sum over the example's tokens
  of grad x activation| of each unit's output, L2-normalised per layer.
- `select_heads` / `select_neurons` turn scores into the units to keep, with one rounding rule;
  `select` does both, and `scores_json` is what the importance JSON holds.

Indices refer to the heads and neurons each layer has now (see `pruning`).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from itertools import islice
from types import TracebackType
from typing import Any, Literal, NamedTuple

import torch
from torch import nn
from tqdm.auto import tqdm

from nerdistill.pruning import encoder_layers, ffn_sizes, head_counts

log = logging.getLogger(__name__)

Scope = Literal["per_layer", "global"]
ROUNDING_RULE = ("removed = round(ratio * units in scope), at least 1 when ratio > 0; per_layer shares it "
                 "out by largest remainder (ties: the least important unit), each layer keeping its minimum")
# A layer keeps at least this share of its FFN neurons (and at least one head). Global scope ranks
# normalised scores across layers, so a layer whose importance is spread evenly could otherwise
# lose nearly all of its FFN; per_layer at any ratio up to 0.95 never reaches this floor.
MIN_NEURON_SHARE = 0.05


class _Gates:
    """Multiply each unit's slice of the input of `projection(layer)` by `gates[layer, unit]` while open.

    `gates` defaults to ones; pass a 0/1 tensor to mask units. Shape (layers, max units); columns
    past a layer's unit count are unused. With `per_example`, each forward also multiplies by a
    fresh leaf of ones per layer, `probes[layer]` (B, units): d loss / d probes[layer][b, u] is
    example b's own grad x activation of unit u (summed over its positions), where a gate shared by
    the batch would sum the examples' terms, letting opposite signs cancel (for importance).
    """

    def __init__(self, encoder: nn.Module, counts: list[int], projection: Callable[[nn.Module], nn.Linear],
                 gates: torch.Tensor | None, per_example: bool) -> None:
        self.layers = encoder_layers(encoder)
        self.counts = counts
        self._projection = projection
        if gates is None:
            gates = torch.ones(len(counts), max(counts), device=projection(self.layers[0]).weight.device)
        if gates.dim() != 2 or gates.shape[0] != len(counts) or gates.shape[1] < max(counts):
            raise ValueError(f"gates shape {tuple(gates.shape)} must be (layers={len(counts)}, "
                             f">= max units per layer={max(counts)})")
        self.gates = gates
        self.per_example = per_example
        self.probes: list[torch.Tensor | None] = [None] * len(counts)  # (B, units) each, from the last forward
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> _Gates:
        for index, (layer, count) in enumerate(zip(self.layers, self.counts)):
            hook = self._hook(index, count)
            self._handles.append(self._projection(layer).register_forward_pre_hook(hook))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, index: int, units: int) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], tuple[torch.Tensor]]:
        def gate(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor]:
            features = args[0]  # (B, T, units * unit_size); unit_size = head size, or 1 for neurons
            per_unit = features.unflatten(-1, (units, -1))  # (B, T, units, unit_size)
            weights = self.gates[index, :units]  # (units,)
            if not self.per_example:
                return ((per_unit * weights.to(features.dtype)[:, None]).flatten(-2),)
            # fp32 leaf whatever the features' dtype, so the gradients are accumulated in fp32.
            probe = torch.ones(features.shape[0], units, device=features.device, requires_grad=True)  # (B, units)
            self.probes[index] = probe
            per_example = (weights * probe).to(features.dtype)[:, None, :, None]  # (B, 1, units, 1)
            return ((per_unit * per_example).flatten(-2),)
        return gate


class HeadGates(_Gates):
    """Gates on attention heads: (layers, max heads)."""

    def __init__(self, encoder: nn.Module, gates: torch.Tensor | None = None, per_example: bool = False) -> None:
        super().__init__(encoder, head_counts(encoder), lambda layer: layer.attention.output.dense, gates,
                         per_example)


class NeuronGates(_Gates):
    """Gates on FFN neurons, after the activation: (layers, max FFN size)."""

    def __init__(self, encoder: nn.Module, gates: torch.Tensor | None = None, per_example: bool = False) -> None:
        super().__init__(encoder, ffn_sizes(encoder), lambda layer: layer.output.dense, gates, per_example)


class Importance(NamedTuple):
    """Per-unit importance, each layer's row L2-normalised; NaN where a layer lacks the unit."""

    heads: torch.Tensor  # (layers, max heads)
    neurons: torch.Tensor  # (layers, max FFN size)


def score(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]],
          loss_fn: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor], num_batches: int) -> Importance:
    """Head and neuron importance from one backward pass per batch.

    Importance of a unit = mean over examples of |d loss_b / d gate|, where the gate gradient is
    the sum over example b's positions of grad x activation of the unit's output (Michel et al.
    take |.| per example: summed over a batch first, opposite signs would cancel). `loss_fn`
    returns a batch mean, which scales example b's term by 1/B: each term is multiplied back by
    the batch's size B, so with a mean over examples it is exactly example b's own gradient and a
    last, shorter batch weighs per example like the others (the per-layer L2 normalisation then
    removes any common scale). Heads or neurons a layer does not have (after an uneven pruning)
    are NaN. Runs in eval mode so that dropout does not add noise.
    """
    device = next(model.parameters()).device
    heads, neurons = HeadGates(model, per_example=True), NeuronGates(model, per_example=True)
    totals = [torch.zeros_like(heads.gates), torch.zeros_like(neurons.gates)]
    was_training = model.training
    model.eval()
    used = examples = 0
    try:
        with heads, neurons:
            for batch in tqdm(islice(batches, num_batches), total=num_batches, desc="importance", unit="batch"):
                batch = {key: value.to(device) if isinstance(value, torch.Tensor) else value
                         for key, value in batch.items()}
                heads.probes, neurons.probes = [None] * len(heads.counts), [None] * len(neurons.counts)
                loss = loss_fn(model, batch)
                probes = [*heads.probes, *neurons.probes]
                if any(probe is None for probe in probes):
                    raise ValueError("importance: the loss function did not run every encoder layer of the model")
                grads = torch.autograd.grad(loss, probes, allow_unused=True, materialize_grads=True)  # (B, units)
                if not all(torch.isfinite(grad).all() for grad in grads):
                    # A NaN would later read as "this unit does not exist" and silently spare it.
                    raise ValueError(f"importance: non-finite loss gradient on batch {used}; the model "
                                     "or the teacher produces NaN/inf outputs on this data")
                size = grads[0].shape[0]
                for layer, grad in enumerate(grads):  # heads' layers, then the neurons'
                    kind, row = divmod(layer, len(heads.counts))
                    totals[kind][row, :grad.shape[1]] += (grad * size).abs().sum(dim=0)
                used += 1
                examples += size
    finally:
        model.train(was_training)
    if used < num_batches:
        log.warning("importance: only %d batches available, %d requested", used, num_batches)
    if used == 0:
        raise ValueError("importance needs at least one batch; the data set is empty")
    return Importance(_normalise_per_layer(totals[0].cpu() / examples, heads.counts),
                      _normalise_per_layer(totals[1].cpu() / examples, neurons.counts))


def _normalise_per_layer(total: torch.Tensor, counts: list[int]) -> torch.Tensor:
    importance = torch.full_like(total, math.nan)
    for index, count in enumerate(counts):
        row = total[index, :count]
        importance[index, :count] = row / (row.norm() + 1e-20)
    return importance


class Selection(NamedTuple):
    """The heads and FFN neurons to keep per layer (current indices) and the report of each selection."""

    heads: dict[int, list[int]]
    neurons: dict[int, list[int]]
    heads_report: dict[str, Any]
    ffn_report: dict[str, Any]


def select(scores: Importance, ratio: float, ffn_ratio: float, scope: Scope = "per_layer") -> Selection:
    """`select_heads` at `ratio` and `select_neurons` at `ffn_ratio`, both in `scope`."""
    heads, heads_report = select_heads(scores.heads, ratio, scope)
    neurons, ffn_report = select_neurons(scores.neurons, ffn_ratio, scope)
    return Selection(heads, neurons, heads_report, ffn_report)


def select_heads(importance: torch.Tensor, ratio: float,
                 scope: Scope = "per_layer") -> tuple[dict[int, list[int]], dict[str, Any]]:
    """Heads to keep per layer and a report; a layer always keeps its most important head."""
    return _select(importance, ratio, scope, "heads", lambda units: 1)


def select_neurons(importance: torch.Tensor, ratio: float,
                   scope: Scope = "per_layer") -> tuple[dict[int, list[int]], dict[str, Any]]:
    """FFN neurons to keep per layer and a report; a layer always keeps its most important
    ceil(MIN_NEURON_SHARE * neurons)."""
    return _select(importance, ratio, scope, "neurons", lambda units: math.ceil(MIN_NEURON_SHARE * units))


def _select(importance: torch.Tensor, ratio: float, scope: Scope, unit: str,
            minimum: Callable[[int], int]) -> tuple[dict[int, list[int]], dict[str, Any]]:
    """Units to keep per layer (least important removed first) and a report of what was done.

    The one rounding rule (ROUNDING_RULE), over the whole scope: remove round(ratio * all units),
    at least one when ratio > 0, so that 0.15 of 3 layers x 4 heads removes 2 heads, not the 0 a
    per-layer floor gives. per_layer shares that count out in proportion to each layer's units
    (`_layer_quotas`); global removes the least important anywhere. A layer never drops below
    `minimum(its units)`: per_layer moves the excess to other layers, global gives a layer its most
    important removed units back (a warning and a line in the report). NaN entries (units a layer
    does not have) are ignored.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"pruning ratio {ratio} must be a fraction in [0, 1]")
    if scope not in ("per_layer", "global"):
        raise ValueError(f"pruning scope {scope!r}; allowed values: per_layer, global")
    rows = importance.tolist()
    present = [[index for index, value in enumerate(row) if not math.isnan(value)] for row in rows]
    # Each layer's units from least to most important; ties broken by position for determinism.
    ordered = [sorted(units, key=lambda index, row=rows[layer]: (row[index], index))
               for layer, units in enumerate(present)]
    total = sum(len(units) for units in present)
    requested = _requested(ratio, total)
    removed: dict[int, list[int]] = {layer: [] for layer in range(len(present))}
    if scope == "per_layer":
        floors = [min(len(units), max(1, minimum(len(units)))) if units else 0 for units in present]
        quotas, spared = _layer_quotas(rows, ordered, floors, ratio, requested)
        for layer, quota in enumerate(quotas):
            removed[layer] = ordered[layer][:quota]
    else:
        ranked = sorted((rows[layer][index], layer, index) for layer, units in enumerate(present) for index in units)
        for _, layer, index in ranked[:requested]:
            removed[layer].append(index)
        spared = _spare(rows, present, removed, minimum, unit)
    gone = {layer: set(indices) for layer, indices in removed.items()}
    keep = {layer: [index for index in units if index not in gone[layer]] for layer, units in enumerate(present)}
    count = sum(len(units) for units in removed.values())
    warning = _no_op_warning(ratio, unit, total, count)
    log.info("pruning %s: ratio %g of %d (%s) -> %d requested, %d removed", unit, ratio, total, scope,
             requested, count)
    report = {
        "ratio": ratio, "scope": scope, "rounding_rule": ROUNDING_RULE,
        f"{unit}_before": total, "removed_requested": requested, "removed": count,
        f"{unit}_after": total - count, "layers_spared": spared, "warning": warning,
    }
    return keep, report


def _requested(ratio: float, units: int) -> int:
    """round(ratio * units), halves up (not Python's to-even), at least 1 when ratio > 0; the 1e-9 keeps
    0.25 * 12 = 2.9999... from rounding the wrong way."""
    if ratio <= 0.0 or units == 0:
        return 0
    return min(units, max(1, math.floor(ratio * units + 0.5 + 1e-9)))


def _layer_quotas(rows: list[list[float]], ordered: list[list[int]], floors: list[int], ratio: float,
                  requested: int) -> tuple[list[int], list[int]]:
    """How many units each layer loses (per_layer scope), summing to `requested` where the floors allow,
    and the layers whose own share (ratio * their units) their floor cuts (spared).

    Largest remainder: each layer first loses floor(ratio * its units), capped by its floor; the
    rest go one by one to the layers with the largest fractional share, ties to the layer whose next
    unit is the least important, and round again while some remain (a cap or the at-least-one).
    """
    exact = [ratio * len(units) for units in ordered]
    capacity = [len(units) - floor for units, floor in zip(ordered, floors)]
    quotas = [min(math.floor(share + 1e-9), room) for share, room in zip(exact, capacity)]
    spared = [layer for layer, (share, room) in enumerate(zip(exact, capacity)) if share > room + 1e-9]

    def priority(layer: int) -> tuple[float, float, int]:
        # The largest share still owed first, then the layer whose next unit to go matters least.
        return quotas[layer] - exact[layer], rows[layer][ordered[layer][quotas[layer]]], layer

    while sum(quotas) < requested and any(quota < room for quota, room in zip(quotas, capacity)):
        open_layers = sorted((layer for layer in range(len(ordered)) if quotas[layer] < capacity[layer]), key=priority)
        for layer in open_layers[:requested - sum(quotas)]:
            quotas[layer] += 1
    if spared:
        log.warning("pruning at ratio %g would leave layers %s below their minimum; their excess went to "
                    "other layers where it could", ratio, spared)
    return quotas, spared


def _no_op_warning(ratio: float, unit: str, total: int, removed: int) -> str | None:
    """The one-line warning when a positive ratio removes nothing (every layer already at its minimum)."""
    if ratio <= 0.0 or removed > 0:
        return None
    warning = (f"ratio {ratio:g} removes none of the {total} {unit}: the layers it would cut already hold only "
               f"their minimum; set the ratio to 0 or prune a model with more {unit} per layer")
    log.warning("pruning %s", warning)
    return warning


def _spare(rows: list[list[float]], present: list[list[int]], removed: dict[int, list[int]],
           minimum: Callable[[int], int], unit: str) -> list[int]:
    spared = []
    for layer, units in enumerate(present):
        floor = min(len(units), max(1, minimum(len(units))))
        missing = floor - (len(units) - len(removed[layer]))
        if units and missing > 0:
            back = set(sorted(removed[layer], key=lambda index: (-rows[layer][index], index))[:missing])
            removed[layer] = [index for index in removed[layer] if index not in back]
            spared.append(layer)
            log.warning("pruning would leave layer %d with fewer than %d %s; giving back its %d most important",
                        layer, floor, unit, missing)
    return spared


def layer_summary(importance: torch.Tensor, keep: Mapping[int, list[int]],
                  quantiles: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)) -> list[dict[str, Any]]:
    """Per layer: units, kept, importance quantiles and the cut (highest removed, lowest kept score).

    For FFN neurons, where the per-unit scores (thousands per layer) are too many for a JSON file
    meant to be read."""
    summary = []
    for layer, row in enumerate(importance.tolist()):
        scores = {index: value for index, value in enumerate(row) if not math.isnan(value)}
        kept = set(keep.get(layer, scores))
        values = torch.tensor(list(scores.values()), dtype=torch.float64)
        removed = [value for index, value in scores.items() if index not in kept]
        summary.append({
            "layer": layer, "units": len(scores), "kept": len(kept),
            "quantiles": dict(zip((f"q{round(100 * q)}" for q in quantiles),
                                  torch.quantile(values, torch.tensor(quantiles, dtype=torch.float64)).tolist())),
            "highest_removed": max(removed, default=None),
            "lowest_kept": min((scores[index] for index in kept), default=None),
        })
    return summary


def scores_json(scores: Importance, selection: Selection, original_heads: list[list[int]],
                batches: int) -> dict[str, Any]:
    """The importance JSON: every head's score (layers x current heads), the original numbers of
    those heads, and a per-layer summary of the FFN neurons' scores (`layer_summary`)."""
    return {"normalisation": "L2 per layer", "batches": batches,
            "layers": [[_finite_or_none(v) for v in row] for row in scores.heads.tolist()],
            "original_heads": original_heads,
            "ffn": layer_summary(scores.neurons, selection.neurons)}


def _finite_or_none(value: float) -> float | None:
    # JSON has no NaN: heads a layer lacks (after an uneven pruning) are written as null.
    return None if value != value else value
