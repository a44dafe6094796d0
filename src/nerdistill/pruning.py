"""Structured attention-head pruning for BERT-family encoders.

transformers 5 dropped `prune_heads` and silently ignores `head_mask`, so this module does
both itself, on any encoder laid out as BERT/RoBERTa/CamemBERT/XLM-R are:
`encoder.layer[i].attention.self.{query,key,value}` and `encoder.layer[i].attention.output.dense`.

- `HeadGates` multiplies each head's output by a gate, through a forward pre-hook on the
  output projection. It acts on the attention output, not on attention probabilities, so it
  works with SDPA and flash attention, which never expose the probabilities.
- `head_importance` is the gradient of those gates (Michel et al., 2019, "Are Sixteen Heads
  Really Better than One?"): |sum over tokens of grad x activation| of each head's output,
  accumulated over batches and L2-normalised per layer.
- `select_heads` turns importances into the heads to keep; `prune_heads` removes the others
  physically (smaller q/k/v/o matrices); `resize_heads` rebuilds those shapes empty so that a
  pruned checkpoint loads.

Head indices always refer to the heads a layer has *now*: after a first pruning, layer 0's
head 2 is the third surviving head, whatever its original number. Callers that need original
numbers (the prune stage's provenance) map them through the previous keep lists.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from itertools import islice
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm


log = logging.getLogger(__name__)

Scope = Literal["per_layer", "global"]
ROUNDING_RULE = "removed = floor(ratio * heads + 1e-9), heads counted per layer (per_layer) or in total (global)"


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer layers of a base encoder, a model wrapping one as `.encoder`, or an HF head model."""
    for path in ("encoder.layer", "encoder.encoder.layer", "base_model.encoder.layer"):
        module: Any = model
        for name in path.split("."):
            module = getattr(module, name, None)
        if isinstance(module, nn.ModuleList) and len(module) > 0 and hasattr(module[0], "attention"):
            return module
    raise ValueError(f"{type(model).__name__} has no BERT-style encoder layers (looked for .encoder.layer, "
                     ".encoder.encoder.layer, .base_model.encoder.layer); pass a BERT/RoBERTa/CamemBERT/XLM-R "
                     "encoder or a model that holds one as .encoder")


def head_counts(model: nn.Module) -> list[int]:
    """Attention heads each layer has now."""
    return [layer.attention.self.num_attention_heads for layer in encoder_layers(model)]


def resize_heads(encoder: nn.Module, counts: list[int]) -> None:
    """Give each layer `counts[i]` heads, with fresh (untrained) q/k/v/o weights of the pruned shapes.

    For loading a pruned checkpoint: build the model from its config, resize, then
    `load_state_dict`. Head size and scaling stay those of the unpruned model.
    """
    layers = encoder_layers(encoder)
    if len(counts) != len(layers):
        raise ValueError(f"head_counts has {len(counts)} entries but the encoder has {len(layers)} layers; "
                         "the config's head_counts must list one count per layer")
    for index, (layer, count) in enumerate(zip(layers, counts)):
        if count < 1:
            raise ValueError(f"head_counts[{index}] = {count}; every layer needs at least one head")
        attention = layer.attention.self
        size = count * attention.attention_head_size
        for name in ("query", "key", "value"):
            old: nn.Linear = getattr(attention, name)
            setattr(attention, name, _linear_like(old, old.in_features, size))
        old_out: nn.Linear = layer.attention.output.dense
        layer.attention.output.dense = _linear_like(old_out, size, old_out.out_features)
        _set_head_count(attention, count)


def prune_heads(encoder: nn.Module, keep: Mapping[int, list[int]]) -> list[int]:
    """Remove every head not listed in `keep[layer]`; layers absent from `keep` are left whole.

    Indices are 0-based and refer to the heads each layer has now (see the module docstring).
    Kept heads stay in increasing order. Returns the new head count of every layer.
    """
    layers = encoder_layers(encoder)
    for index, kept in keep.items():
        if not 0 <= index < len(layers):
            raise ValueError(f"layer {index} does not exist; the encoder has layers 0..{len(layers) - 1}")
        current = layers[index].attention.self.num_attention_heads
        if not kept:
            raise ValueError(f"layer {index}: cannot remove all heads; keep at least one")
        if len(set(kept)) != len(kept) or not all(0 <= head < current for head in kept):
            raise ValueError(f"layer {index}: heads to keep {kept} must be distinct indices in 0..{current - 1}")
        _prune_layer(layers[index], sorted(kept))
    return head_counts(encoder)


def original_heads(current: list[list[int]], keep: Mapping[int, list[int]]) -> list[list[int]]:
    """Original numbers of the heads `keep` retains, per layer.

    `current[layer]` holds the original numbers of the heads the layer has now (`range(heads)`
    for a model never pruned); `keep` uses current indices, as `prune_heads` does.
    """
    return [[heads[index] for index in sorted(keep.get(layer, range(len(heads))))]
            for layer, heads in enumerate(current)]


def _prune_layer(layer: nn.Module, kept: list[int]) -> None:
    attention = layer.attention.self
    head_size = attention.attention_head_size
    rows = torch.cat([torch.arange(head * head_size, (head + 1) * head_size) for head in kept])
    with torch.no_grad():
        for name in ("query", "key", "value"):
            old: nn.Linear = getattr(attention, name)
            new = _linear_like(old, old.in_features, len(rows))
            new.weight.copy_(old.weight[rows.to(old.weight.device)])
            new.bias.copy_(old.bias[rows.to(old.bias.device)])
            setattr(attention, name, new)
        old_out: nn.Linear = layer.attention.output.dense
        new_out = _linear_like(old_out, len(rows), old_out.out_features)
        new_out.weight.copy_(old_out.weight[:, rows.to(old_out.weight.device)])
        # The output bias is added once, after the heads are summed: it belongs to no head.
        new_out.bias.copy_(old_out.bias)
        layer.attention.output.dense = new_out
    _set_head_count(attention, len(kept))


def _linear_like(old: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    linear = nn.Linear(in_features, out_features, bias=old.bias is not None,
                       device=old.weight.device, dtype=old.weight.dtype)
    linear.requires_grad_(old.weight.requires_grad)
    return linear


def _set_head_count(attention: nn.Module, count: int) -> None:
    # forward() reshapes with (-1, attention_head_size) and uses `scaling`; both stay as built.
    attention.num_attention_heads = count
    attention.all_head_size = count * attention.attention_head_size


class HeadGates:
    """Multiply each head's output by `gates[layer, head]` while the context is open.

    `gates` defaults to ones with `requires_grad=True` (for importance); pass a 0/1 tensor to
    mask heads. Shape (layers, max heads); columns past a layer's head count are unused.
    """

    def __init__(self, encoder: nn.Module, gates: torch.Tensor | None = None) -> None:
        self.layers = encoder_layers(encoder)
        counts = head_counts(encoder)
        if gates is None:
            device = self.layers[0].attention.output.dense.weight.device
            gates = torch.ones(len(counts), max(counts), device=device, requires_grad=True)
        if gates.dim() != 2 or gates.shape[0] != len(counts) or gates.shape[1] < max(counts):
            raise ValueError(f"gates shape {tuple(gates.shape)} must be (layers={len(counts)}, "
                             f">= max heads={max(counts)})")
        self.gates = gates
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> HeadGates:
        for index, layer in enumerate(self.layers):
            hook = self._hook(index, layer.attention.self.num_attention_heads)
            self._handles.append(layer.attention.output.dense.register_forward_pre_hook(hook))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, index: int, heads: int) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], tuple[torch.Tensor]]:
        def gate(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor]:
            context = args[0]  # (B, T, heads * head_size)
            per_head = context.unflatten(-1, (heads, -1))  # (B, T, heads, head_size)
            weights = self.gates[index, :heads].to(context.dtype)[:, None]  # (heads, 1)
            return ((per_head * weights).flatten(-2),)
        return gate


def head_importance(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                    loss_fn: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor],
                    num_batches: int) -> torch.Tensor:
    """Per-head importance, (layers, max heads), each layer's row L2-normalised.

    Importance = sum over batches of |d loss / d gate|; the gate gradient equals the sum over
    tokens of grad x activation of the head's output. Heads a layer does not have (after an
    uneven pruning) are NaN. Runs in eval mode so that dropout does not add noise.
    """
    counts = head_counts(model)
    device = next(model.parameters()).device
    total = torch.zeros(len(counts), max(counts), device=device)
    was_training = model.training
    model.eval()
    used = 0
    try:
        with HeadGates(model) as gates:
            for batch in tqdm(islice(batches, num_batches), total=num_batches, desc="head importance",
                              unit="batch"):
                batch = {key: value.to(device) if isinstance(value, torch.Tensor) else value
                         for key, value in batch.items()}
                (grad,) = torch.autograd.grad(loss_fn(model, batch), gates.gates)
                if not torch.isfinite(grad).all():
                    # A NaN would later read as "this head does not exist" and silently spare it.
                    raise ValueError(f"head importance: non-finite loss gradient on batch {used}; the model "
                                     "or the teacher produces NaN/inf outputs on this data")
                total += grad.abs()
                used += 1
    finally:
        model.train(was_training)
    if used < num_batches:
        log.warning("head importance: only %d batches available, %d requested", used, num_batches)
    if used == 0:
        raise ValueError("head importance needs at least one batch; the data set is empty")
    return _normalise_per_layer(total.detach().cpu(), counts)


def _normalise_per_layer(total: torch.Tensor, counts: list[int]) -> torch.Tensor:
    importance = torch.full_like(total, math.nan)
    for index, count in enumerate(counts):
        row = total[index, :count]
        importance[index, :count] = row / (row.norm() + 1e-20)
    return importance


def select_heads(importance: torch.Tensor, ratio: float,
                 scope: Scope = "per_layer") -> tuple[dict[int, list[int]], dict[str, Any]]:
    """Heads to keep per layer (least important removed first) and a report of what was done.

    The one rounding rule (ROUNDING_RULE): remove floor(ratio * heads + 1e-9), counting heads per
    layer or in total; the 1e-9 keeps 0.25 * 12 from rounding down to 2 on float error. A layer is
    never emptied: its most important head is kept, with a warning and a line in the report.
    NaN entries (heads a layer does not have) are ignored.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"pruning ratio {ratio} must be a fraction in [0, 1]")
    if scope not in ("per_layer", "global"):
        raise ValueError(f"pruning scope {scope!r}; allowed values: per_layer, global")
    present = [[head for head in range(importance.shape[1]) if not math.isnan(float(importance[layer, head]))]
               for layer in range(importance.shape[0])]
    total = sum(len(heads) for heads in present)
    ranked = _rank_heads(importance, present)
    if scope == "per_layer":
        removed = {layer: [head for _, l, head in ranked if l == layer][:math.floor(ratio * len(heads) + 1e-9)]
                   for layer, heads in enumerate(present)}
        requested = sum(len(heads) for heads in removed.values())
    else:
        requested = math.floor(ratio * total + 1e-9)
        removed = {layer: [] for layer in range(len(present))}
        for _, layer, head in ranked[:requested]:
            removed[layer].append(head)
    kept_one = _spare_emptied_layers(importance, present, removed)
    keep = {layer: [head for head in heads if head not in removed[layer]] for layer, heads in enumerate(present)}
    report = {
        "ratio": ratio, "scope": scope, "rounding_rule": ROUNDING_RULE,
        "heads_before": total, "removed_requested": requested,
        "removed": sum(len(heads) for heads in removed.values()),
        "heads_after": sum(len(heads) for heads in keep.values()),
        "layers_kept_one_head": kept_one,
    }
    return keep, report


def _rank_heads(importance: torch.Tensor, present: list[list[int]]) -> list[tuple[float, int, int]]:
    """(importance, layer, head) from least to most important; ties broken by position for determinism."""
    return sorted((float(importance[layer, head]), layer, head)
                  for layer, heads in enumerate(present) for head in heads)


def _spare_emptied_layers(importance: torch.Tensor, present: list[list[int]],
                          removed: dict[int, list[int]]) -> list[int]:
    spared = []
    for layer, heads in enumerate(present):
        if heads and len(removed[layer]) == len(heads):
            best = max(heads, key=lambda head: (float(importance[layer, head]), -head))
            removed[layer].remove(best)
            spared.append(layer)
            log.warning("pruning would remove every head of layer %d; keeping its most important head %d",
                           layer, best)
    return spared
