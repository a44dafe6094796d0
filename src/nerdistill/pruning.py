"""Structured pruning surgery for BERT-family encoders: attention heads and FFN neurons.

transformers 5 dropped `prune_heads` and silently ignores `head_mask`, so this module removes
heads itself, and FFN (intermediate) neurons too, on any encoder laid out as
BERT/RoBERTa/CamemBERT/XLM-R are: `encoder.layer[i].attention.self.{query,key,value}`,
`encoder.layer[i].attention.output.dense`, `encoder.layer[i].intermediate.dense` and
`encoder.layer[i].output.dense`. Which heads and neurons to remove is `importance`'s job.

- `prune_heads` / `prune_ffn` remove what a keep list leaves out, physically (smaller q/k/v/o
  matrices; fewer rows of the intermediate projection and columns of the output projection).
- `resize_heads` / `resize_ffn` rebuild those shapes empty so that a pruned checkpoint loads.

Indices always refer to the heads or neurons a layer has *now*: after a first pruning, layer 0's
head 2 is the third surviving head, whatever its original number. `original_indices` maps keep
lists back to original numbers; `index_mask` and `mask_indices` write and read thousands of kept
neurons compactly. `originals_now` reads a student's original numbers from its provenance, and
`apply` prunes a student to a selection and records it there and in `heads_pruned.json`.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn


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


def ffn_sizes(model: nn.Module) -> list[int]:
    """FFN (intermediate) neurons each layer has now."""
    return [layer.intermediate.dense.out_features for layer in encoder_layers(model)]


def resize_heads(encoder: nn.Module, counts: list[int]) -> None:
    """Give each layer `counts[i]` heads, with fresh (untrained) q/k/v/o weights of the pruned shapes.

    For loading a pruned checkpoint: build the model from its config, resize, then
    `load_state_dict`. Head size and scaling stay those of the unpruned model.
    """
    layers = _sized_layers(encoder, counts, "head_counts", "head")
    for layer, count in zip(layers, counts):
        attention = layer.attention.self
        size = count * attention.attention_head_size
        for name in ("query", "key", "value"):
            old: nn.Linear = getattr(attention, name)
            setattr(attention, name, _linear_like(old, old.in_features, size))
        old_out: nn.Linear = layer.attention.output.dense
        layer.attention.output.dense = _linear_like(old_out, size, old_out.out_features)
        _set_head_count(attention, count)


def resize_ffn(encoder: nn.Module, sizes: list[int]) -> None:
    """Give each layer `sizes[i]` FFN neurons, with fresh (untrained) weights of the pruned shapes.

    For loading a pruned checkpoint, as `resize_heads`.
    """
    for layer, size in zip(_sized_layers(encoder, sizes, "ffn_sizes", "FFN neuron"), sizes):
        old_in: nn.Linear = layer.intermediate.dense
        layer.intermediate.dense = _linear_like(old_in, old_in.in_features, size)
        old_out: nn.Linear = layer.output.dense
        layer.output.dense = _linear_like(old_out, size, old_out.out_features)


def _sized_layers(encoder: nn.Module, sizes: list[int], key: str, unit: str) -> nn.ModuleList:
    layers = encoder_layers(encoder)
    if len(sizes) != len(layers):
        raise ValueError(f"{key} has {len(sizes)} entries but the encoder has {len(layers)} layers; "
                         f"the config's {key} must list one number per layer")
    for index, size in enumerate(sizes):
        if size < 1:
            raise ValueError(f"{key}[{index}] = {size}; every layer needs at least one {unit}")
    return layers


def prune_heads(encoder: nn.Module, keep: Mapping[int, list[int]]) -> list[int]:
    """Remove every head not listed in `keep[layer]`; layers absent from `keep` are left whole.

    Indices are 0-based and refer to the heads each layer has now (see the module docstring).
    Kept heads stay in increasing order. Returns the new head count of every layer.
    """
    layers = encoder_layers(encoder)
    for index, kept in _checked_keep(keep, head_counts(encoder), "heads"):
        _prune_heads_of(layers[index], kept)
    return head_counts(encoder)


def prune_ffn(encoder: nn.Module, keep: Mapping[int, list[int]]) -> list[int]:
    """Remove every FFN neuron not listed in `keep[layer]`; layers absent from `keep` are left whole.

    Indices are 0-based and refer to the neurons each layer has now. Returns the new FFN size of
    every layer.
    """
    layers = encoder_layers(encoder)
    for index, kept in _checked_keep(keep, ffn_sizes(encoder), "FFN neurons"):
        layer = layers[index]
        rows = torch.tensor(kept)
        with torch.no_grad():
            layer.intermediate.dense = _rows_of(layer.intermediate.dense, rows)
            # The output bias is added once, after the neurons are summed: it belongs to no neuron.
            layer.output.dense = _columns_of(layer.output.dense, rows)
    return ffn_sizes(encoder)


def _checked_keep(keep: Mapping[int, list[int]], sizes: list[int], unit: str) -> list[tuple[int, list[int]]]:
    checked = []
    for index, kept in keep.items():
        if not 0 <= index < len(sizes):
            raise ValueError(f"layer {index} does not exist; the encoder has layers 0..{len(sizes) - 1}")
        if not kept:
            raise ValueError(f"layer {index}: cannot remove all {unit}; keep at least one")
        if len(set(kept)) != len(kept) or not all(0 <= unit_index < sizes[index] for unit_index in kept):
            raise ValueError(f"layer {index}: {unit} to keep {kept} must be distinct indices in 0..{sizes[index] - 1}")
        checked.append((index, sorted(kept)))
    return checked


def original_indices(current: list[list[int]], keep: Mapping[int, list[int]]) -> list[list[int]]:
    """Original numbers of the heads (or neurons) `keep` retains, per layer.

    `current[layer]` holds the original numbers of the units the layer has now (`range(n)` for a
    model never pruned); `keep` uses current indices, as `prune_heads` and `prune_ffn` do.
    """
    return [[units[index] for index in sorted(keep.get(layer, range(len(units))))]
            for layer, units in enumerate(current)]


def index_mask(indices: Iterable[int], size: int) -> str:
    """`indices` (a subset of 0..size-1) as a hex bitmask, bit i set for index i.

    3072 kept neurons take 768 characters instead of a 3072-line list in an indented config.json.
    """
    mask = 0
    for index in indices:
        mask |= 1 << index
    return f"{mask:0{-(-size // 4)}x}"


def mask_indices(mask: str) -> list[int]:
    """The indices `index_mask` wrote, in increasing order."""
    value = int(mask, 16)
    return [index for index in range(4 * len(mask)) if value >> index & 1]


class Originals(NamedTuple):
    """Original numbers of each layer's current heads and FFN neurons (`range(n)` if never pruned)."""

    heads: list[list[int]]
    neurons: list[list[int]]


def originals_now(student: nn.Module, folder: Path) -> Originals:
    """Original numbers of a student's current heads and neurons, from an earlier pruning's provenance.

    `student.config` carries `head_counts`, `ffn_sizes` and `provenance`; `folder` (the model's)
    names the config.json in the error raised when a pruned student's provenance lacks the numbers."""
    provenance = student.config.provenance or {}
    masks = provenance.get("neurons_kept_mask")
    originals = []
    for config_key, sizes, key, listed in (
            ("head_counts", head_counts(student), "heads_kept", provenance.get("heads_kept")),
            ("ffn_sizes", ffn_sizes(student), "neurons_kept_mask",
             None if masks is None else [mask_indices(mask) for mask in masks])):
        if getattr(student.config, config_key) is None:
            originals.append([list(range(size)) for size in sizes])
        elif listed is None or [len(kept) for kept in listed] != sizes:
            raise ValueError(f"{folder}/config.json: the model is pruned ({config_key} {sizes}) but its "
                             f"provenance has no matching {key}, so original numbers are unknown; prune the "
                             "distilled student produced by `nerdistill distill` instead")
        else:
            originals.append(listed)
    return Originals(*originals)


def size_figures(model: nn.Module) -> dict[str, int]:
    """Attention heads, FFN neurons and parameters a model has now, in total."""
    return {"heads": sum(head_counts(model)), "neurons": sum(ffn_sizes(model)), "params": _parameter_count(model)}


@dataclass(frozen=True)
class Removal:
    """What `apply` removed from a student."""

    heads_file: dict[str, Any]  # heads_pruned.json: kept and removed heads per layer (original numbers), reports
    ffn_sizes_before: list[int]
    ffn_sizes_after: list[int]
    params_removed_heads: int
    params_removed_ffn: int


def apply(student: nn.Module, originals: Originals, heads: Mapping[int, list[int]],
          neurons: Mapping[int, list[int]] | None, heads_report: dict[str, Any],
          ffn_report: dict[str, Any]) -> Removal:
    """Prune `student` to the heads and FFN neurons to keep (current indices) and record it in its config.

    `neurons=None` leaves the FFN layers as they are, not even rebuilt. The config gets the new
    head counts and FFN sizes, and a provenance whose `heads_kept` and `neurons_kept_mask` hold
    original numbers (`originals` maps current ones back) and whose `pruning` list gains both
    selection reports."""
    sizes_before, params_before = ffn_sizes(student), _parameter_count(student)
    student.config.head_counts = prune_heads(student, heads)
    params_after_heads = _parameter_count(student)
    if neurons is not None:
        student.config.ffn_sizes = prune_ffn(student, neurons)
    kept = Originals(original_indices(originals.heads, heads), original_indices(originals.neurons, neurons or {}))
    student.config.provenance = _provenance(student.config, kept, {"heads": heads_report, "ffn": ffn_report})
    heads_file = {**_heads_file(kept.heads, originals.heads, student.config.encoder.num_attention_heads,
                                heads_report), "ffn": ffn_report}
    return Removal(heads_file, sizes_before, ffn_sizes(student), params_before - params_after_heads,
                   params_after_heads - _parameter_count(student))


def _provenance(config: Any, kept: Originals, report: dict[str, Any]) -> dict[str, Any]:
    earlier = config.provenance or {}
    recorded = {**earlier, "heads_kept": kept.heads, "pruning": [*earlier.get("pruning", []), report]}
    if config.ffn_sizes is not None:
        size = config.encoder.intermediate_size
        recorded["neurons_kept_mask"] = [index_mask(neurons, size) for neurons in kept.neurons]
    return recorded


def _heads_file(kept: list[list[int]], current: list[list[int]], original_count: int,
                report: dict[str, Any]) -> dict[str, Any]:
    layers = [{"layer": layer, "kept": heads, "removed": sorted(set(range(original_count)) - set(heads)),
               "removed_now": sorted(set(current[layer]) - set(heads))}
              for layer, heads in enumerate(kept)]
    return {"head_numbering": "original heads of the distilled student, 0-based; layers 0-based",
            **report, "layers": layers}


def _parameter_count(model: nn.Module) -> int:
    # modeling.parameter_count's sum; modeling imports this module, so it cannot be imported here.
    return sum(param.numel() for param in model.parameters())


def _prune_heads_of(layer: nn.Module, kept: list[int]) -> None:
    attention = layer.attention.self
    head_size = attention.attention_head_size
    rows = torch.cat([torch.arange(head * head_size, (head + 1) * head_size) for head in kept])
    with torch.no_grad():
        for name in ("query", "key", "value"):
            setattr(attention, name, _rows_of(getattr(attention, name), rows))
        # The output bias is added once, after the heads are summed: it belongs to no head.
        layer.attention.output.dense = _columns_of(layer.attention.output.dense, rows)
    _set_head_count(attention, len(kept))


def _rows_of(old: nn.Linear, rows: torch.Tensor) -> nn.Linear:
    """A copy of `old` with only the output features `rows`."""
    new = _linear_like(old, old.in_features, len(rows))
    new.weight.copy_(old.weight[rows.to(old.weight.device)])
    new.bias.copy_(old.bias[rows.to(old.bias.device)])
    return new


def _columns_of(old: nn.Linear, columns: torch.Tensor) -> nn.Linear:
    """A copy of `old` reading only the input features `columns`; its bias whole."""
    new = _linear_like(old, len(columns), old.out_features)
    new.weight.copy_(old.weight[:, columns.to(old.weight.device)])
    new.bias.copy_(old.bias)
    return new


def _linear_like(old: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    linear = nn.Linear(in_features, out_features, bias=old.bias is not None,
                       device=old.weight.device, dtype=old.weight.dtype)
    linear.requires_grad_(old.weight.requires_grad)
    return linear


def _set_head_count(attention: nn.Module, count: int) -> None:
    # forward() reshapes with (-1, attention_head_size) and uses `scaling`; both stay as built.
    attention.num_attention_heads = count
    attention.all_head_size = count * attention.attention_head_size
