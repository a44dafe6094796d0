"""Head and FFN-neuron gates, importance, selection and physical pruning on tiny random encoders."""
from __future__ import annotations

import copy
import logging
import math

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel, CamembertConfig, CamembertModel

from nerdistill.importance import (
    MIN_NEURON_SHARE,
    HeadGates,
    NeuronGates,
    layer_summary,
    score,
    select_heads,
    select_neurons,
)
from nerdistill.plots import plot_importance
from nerdistill.pruning import (
    ffn_sizes,
    head_counts,
    index_mask,
    mask_indices,
    original_indices,
    prune_ffn,
    prune_heads,
    resize_ffn,
    resize_heads,
)

HIDDEN, HEADS, LAYERS, FFN = 32, 4, 4, 64
HEAD_SIZE = HIDDEN // HEADS


def _tiny(kind: str = "camembert", attn: str = "sdpa") -> nn.Module:
    torch.manual_seed(0)
    config_class, model_class = {"camembert": (CamembertConfig, CamembertModel), "bert": (BertConfig, BertModel)}[kind]
    config = config_class(vocab_size=60, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                          intermediate_size=FFN, max_position_embeddings=64, attn_implementation=attn)
    return model_class(config).eval()


def _inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, 60, (2, 9), generator=generator)
    attention_mask = torch.ones(2, 9, dtype=torch.long)
    attention_mask[1, 6:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _run(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(**_inputs()).last_hidden_state


def _mask(keep: dict[int, list[int]]) -> torch.Tensor:
    gates = torch.zeros(LAYERS, HEADS)
    for layer, heads in keep.items():
        gates[layer, heads] = 1.0
    return gates


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


UNEVEN_KEEP = {0: [0, 1, 3], 1: [2], 2: [0, 1, 2, 3], 3: [1, 3]}


@pytest.mark.parametrize("kind,attn", [("camembert", "sdpa"), ("camembert", "eager"), ("bert", "sdpa")])
def test_pruned_model_matches_gated_model(kind: str, attn: str) -> None:
    model = _tiny(kind, attn)
    with HeadGates(model, _mask(UNEVEN_KEEP)):
        gated = _run(model)
    pruned = copy.deepcopy(model)
    counts = prune_heads(pruned, UNEVEN_KEEP)
    assert counts == [3, 1, 4, 2]
    torch.testing.assert_close(_run(pruned), gated, atol=1e-5, rtol=1e-5)
    # And the gating is not a no-op: the unpruned model differs.
    assert not torch.allclose(_run(model), gated, atol=1e-3)


def test_gates_are_removed_on_exit() -> None:
    model = _tiny()
    before = _run(model)
    with HeadGates(model, torch.zeros(LAYERS, HEADS)):
        assert not torch.allclose(_run(model), before, atol=1e-3)
    torch.testing.assert_close(_run(model), before)


def test_parameter_count_drops_by_exactly_the_removed_heads() -> None:
    model = _tiny()
    pruned = copy.deepcopy(model)
    prune_heads(pruned, UNEVEN_KEEP)
    removed = LAYERS * HEADS - sum(len(heads) for heads in UNEVEN_KEEP.values())
    # Per head: q, k, v rows (weights + biases) and the output projection's columns (its bias stays).
    per_head = 3 * (HEAD_SIZE * HIDDEN + HEAD_SIZE) + HIDDEN * HEAD_SIZE
    assert _n_params(model) - _n_params(pruned) == removed * per_head


def test_prune_twice_indices_refer_to_current_heads() -> None:
    model = _tiny()
    once = copy.deepcopy(model)
    prune_heads(once, {0: [1, 2, 3]})
    prune_heads(once, {0: [0, 2]})  # current heads 0 and 2 = original heads 1 and 3
    direct = copy.deepcopy(model)
    prune_heads(direct, {0: [1, 3]})
    assert head_counts(once) == [2, 4, 4, 4]
    torch.testing.assert_close(_run(once), _run(direct))


def test_original_indices_map_current_indices_through_earlier_pruning() -> None:
    first = original_indices([[0, 1, 2, 3], [0, 1, 2, 3]], {0: [3, 1, 2]})
    assert first == [[1, 2, 3], [0, 1, 2, 3]]
    assert original_indices(first, {0: [0, 2], 1: [3]}) == [[1, 3], [3]]


@pytest.mark.parametrize("indices,size", [([], 4), ([0], 1), ([1, 3], 4), ([0, 5, 3071], 3072),
                                          (list(range(0, 3072, 2)), 3072)])
def test_index_mask_round_trips(indices: list[int], size: int) -> None:
    mask = index_mask(indices, size)
    assert len(mask) == -(-size // 4) and mask_indices(mask) == indices


def test_resize_then_load_reproduces_uneven_pruned_model() -> None:
    pruned = _tiny()
    prune_heads(pruned, UNEVEN_KEEP)
    fresh = CamembertModel(pruned.config).eval()
    resize_heads(fresh, [3, 1, 4, 2])
    fresh.load_state_dict(pruned.state_dict())
    assert head_counts(fresh) == [3, 1, 4, 2]
    torch.testing.assert_close(_run(fresh), _run(pruned), atol=0, rtol=0)


def test_resize_rejects_bad_counts() -> None:
    model = _tiny()
    with pytest.raises(ValueError, match="4 layers"):
        resize_heads(model, [2, 2])
    with pytest.raises(ValueError, match="at least one head"):
        resize_heads(model, [2, 0, 2, 2])


def test_prune_rejects_empty_or_bad_keep_lists() -> None:
    model = _tiny()
    with pytest.raises(ValueError, match="cannot remove all heads"):
        prune_heads(model, {1: []})
    with pytest.raises(ValueError, match="0..3"):
        prune_heads(model, {1: [4]})
    with pytest.raises(ValueError, match="layer 7 does not exist"):
        prune_heads(model, {7: [0]})


NEURONS_KEPT = {0: list(range(0, FFN, 2)), 1: [3], 2: list(range(FFN)), 3: list(range(10, 50))}
NEURON_SIZES = [FFN // 2, 1, FFN, 40]


def _neuron_mask(keep: dict[int, list[int]]) -> torch.Tensor:
    gates = torch.zeros(LAYERS, FFN)
    for layer, neurons in keep.items():
        gates[layer, neurons] = 1.0
    return gates


@pytest.mark.parametrize("kind,attn", [("camembert", "sdpa"), ("bert", "eager")])
def test_ffn_pruned_model_matches_model_with_those_neurons_gated(kind: str, attn: str) -> None:
    model = _tiny(kind, attn)
    with NeuronGates(model, _neuron_mask(NEURONS_KEPT)):
        gated = _run(model)
    pruned = copy.deepcopy(model)
    assert prune_ffn(pruned, NEURONS_KEPT) == ffn_sizes(pruned) == NEURON_SIZES
    torch.testing.assert_close(_run(pruned), gated, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(_run(model), gated, atol=1e-3)
    assert pruned.encoder.layer[0].intermediate.dense.weight.shape == (FFN // 2, HIDDEN)
    assert pruned.encoder.layer[0].output.dense.weight.shape == (HIDDEN, FFN // 2)


def test_heads_and_neurons_pruned_together_match_both_gates() -> None:
    model = _tiny()
    with HeadGates(model, _mask(UNEVEN_KEEP)), NeuronGates(model, _neuron_mask(NEURONS_KEPT)):
        gated = _run(model)
    prune_heads(model, UNEVEN_KEEP)
    prune_ffn(model, NEURONS_KEPT)
    torch.testing.assert_close(_run(model), gated, atol=1e-5, rtol=1e-5)


def test_neuron_gates_are_removed_on_exit() -> None:
    model = _tiny()
    before = _run(model)
    with NeuronGates(model, torch.zeros(LAYERS, FFN)):
        assert not torch.allclose(_run(model), before, atol=1e-3)
    torch.testing.assert_close(_run(model), before)


def test_parameter_count_drops_by_exactly_the_removed_neurons() -> None:
    model = _tiny()
    pruned = copy.deepcopy(model)
    prune_ffn(pruned, NEURONS_KEPT)
    # Per neuron: its intermediate row and bias, its output column (the output bias stays).
    assert _n_params(model) - _n_params(pruned) == (LAYERS * FFN - sum(NEURON_SIZES)) * (2 * HIDDEN + 1)


def test_prune_ffn_twice_indices_refer_to_current_neurons() -> None:
    model = _tiny()
    once = copy.deepcopy(model)
    prune_ffn(once, {1: [4, 9, 20, 33]})
    prune_ffn(once, {1: [1, 3]})  # current neurons 1 and 3 = original neurons 9 and 33
    direct = copy.deepcopy(model)
    prune_ffn(direct, {1: [9, 33]})
    assert ffn_sizes(once) == [FFN, 2, FFN, FFN]
    torch.testing.assert_close(_run(once), _run(direct))


def test_resize_then_load_reproduces_uneven_heads_and_ffn() -> None:
    pruned = _tiny()
    prune_heads(pruned, UNEVEN_KEEP)
    prune_ffn(pruned, NEURONS_KEPT)
    fresh = CamembertModel(pruned.config).eval()
    resize_heads(fresh, [3, 1, 4, 2])
    resize_ffn(fresh, NEURON_SIZES)
    fresh.load_state_dict(pruned.state_dict())
    assert ffn_sizes(fresh) == NEURON_SIZES and head_counts(fresh) == [3, 1, 4, 2]
    torch.testing.assert_close(_run(fresh), _run(pruned), atol=0, rtol=0)


def test_resize_ffn_and_prune_ffn_reject_bad_input() -> None:
    model = _tiny()
    with pytest.raises(ValueError, match="ffn_sizes has 2 entries"):
        resize_ffn(model, [8, 8])
    with pytest.raises(ValueError, match="at least one FFN neuron"):
        resize_ffn(model, [8, 0, 8, 8])
    with pytest.raises(ValueError, match="cannot remove all FFN neurons"):
        prune_ffn(model, {1: []})
    with pytest.raises(ValueError, match=f"0..{FFN - 1}"):
        prune_ffn(model, {1: [FFN]})
    with pytest.raises(ValueError, match="distinct"):
        prune_ffn(model, {1: [2, 2]})
    assert ffn_sizes(model) == [FFN] * LAYERS


def test_importance_of_a_dead_head_is_zero() -> None:
    model = _tiny()
    value = model.encoder.layer[2].attention.self.value
    with torch.no_grad():  # head 1 of layer 2 now outputs exactly zero
        value.weight[HEAD_SIZE:2 * HEAD_SIZE] = 0
        value.bias[HEAD_SIZE:2 * HEAD_SIZE] = 0
    batches = [_inputs()] * 3

    def loss_fn(m: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return m(**batch).last_hidden_state[..., 0].pow(2).mean()  # all features: constant (LayerNorm)

    importance = score(model, batches, loss_fn, num_batches=2).heads
    assert importance.shape == (LAYERS, HEADS)
    assert importance[2, 1].item() < 1e-6
    assert importance[2].max().item() > 0.1
    torch.testing.assert_close(importance.norm(dim=1), torch.ones(LAYERS))
    assert not model.training and all(p.grad is None for p in model.parameters())


def test_importance_of_a_dead_neuron_is_zero_and_equals_grad_times_activation() -> None:
    model = _tiny()
    with torch.no_grad():  # neuron 5 of layer 1 now reads nothing from the output projection
        model.encoder.layer[1].output.dense.weight[:, 5] = 0
    batches = [_inputs()]

    def loss_fn(m: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return m(**batch).last_hidden_state[..., 0].pow(2).mean()  # all features: constant (LayerNorm)

    neurons = score(model, batches, loss_fn, num_batches=1).neurons
    assert neurons.shape == (LAYERS, FFN)
    assert neurons[1, 5].item() < 1e-6 and neurons[1].max().item() > 0.05
    torch.testing.assert_close(neurons.norm(dim=1), torch.ones(LAYERS))
    # Each example's gate gradient is |sum over its tokens of grad x activation|, averaged over examples.
    captured = {}

    def keep_activation(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        out.retain_grad()
        captured["act"] = out

    handle = model.encoder.layer[2].intermediate.register_forward_hook(keep_activation)
    loss_fn(model, batches[0]).backward()
    handle.remove()
    act = captured["act"]  # (B, T, FFN)
    expected = (act * act.grad).sum(dim=1).abs().mean(dim=0)
    torch.testing.assert_close(neurons[2], expected / expected.norm(), atol=1e-5, rtol=1e-4)


def test_importance_refuses_non_finite_gradients() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        score(_tiny(), [_inputs()], lambda m, b: m(**b).last_hidden_state.sum() * float("nan"), 1)


def test_importance_is_nan_for_heads_a_pruned_layer_lacks() -> None:
    model = _tiny()
    prune_heads(model, {1: [0, 2]})
    prune_ffn(model, {2: list(range(0, FFN, 2))})
    importance = score(model, [_inputs()], lambda m, b: m(**b).last_hidden_state.sum(), 1)
    heads = importance.heads
    assert torch.isnan(heads[1, 2:]).all() and not torch.isnan(heads[1, :2]).any()
    keep, report = select_heads(heads, 0.5, "per_layer")
    assert report["heads_before"] == 14 and keep[1] in ([0], [1])
    neurons = importance.neurons
    assert torch.isnan(neurons[2, FFN // 2:]).all() and not torch.isnan(neurons[2, :FFN // 2]).any()
    keep, report = select_neurons(neurons, 0.5, "per_layer")
    assert report["neurons_before"] == 3 * FFN + FFN // 2 and len(keep[2]) == FFN // 4


def test_select_ratio_zero_is_a_no_op() -> None:
    importance = torch.rand(LAYERS, HEADS)
    for scope in ("per_layer", "global"):
        keep, report = select_heads(importance, 0.0, scope)
        assert keep == {layer: list(range(HEADS)) for layer in range(LAYERS)}
        assert report["removed"] == 0


def test_select_per_layer_rounding_and_order() -> None:
    importance = torch.arange(24, dtype=torch.float).reshape(2, 12).flip(1)  # head 11 least important
    keep, report = select_heads(importance, 0.25, "per_layer")
    assert keep == {0: list(range(9)), 1: list(range(9))}  # floor(0.25 * 12) = 3, not 2 from float error
    assert report["removed"] == report["removed_requested"] == 6
    keep, report = select_heads(torch.rand(3, 4), 0.3, "per_layer")  # round(0.3 * 12) = round(3.6) = 4 in the scope
    assert report["removed"] == 4 and sorted(len(heads) for heads in keep.values()) == [2, 3, 3]


def test_select_global_removes_least_important_anywhere() -> None:
    importance = torch.tensor([[0.9, 0.8, 0.7, 0.6], [0.1, 0.2, 0.95, 0.3]])
    keep, report = select_heads(importance, 0.25, "global")  # floor(0.25 * 8) = 2
    assert keep == {0: [0, 1, 2, 3], 1: [2, 3]}
    assert report["removed"] == 2 and report["layers_spared"] == []


def test_select_never_empties_a_layer(caplog: pytest.LogCaptureFixture) -> None:
    importance = torch.tensor([[0.9, 0.8, 0.7, 0.6], [0.1, 0.2, 0.3, 0.05]])
    with caplog.at_level(logging.WARNING, logger="nerdistill.importance"):
        keep, report = select_heads(importance, 0.5, "global")  # 4 lowest are all of layer 1
    assert keep == {0: [0, 1, 2, 3], 1: [2]}
    assert report["layers_spared"] == [1]
    assert report["removed_requested"] == 4 and report["removed"] == 3
    assert "layer 1" in caplog.text


def test_select_neurons_per_layer_rounding_and_ratio_zero() -> None:
    importance = torch.rand(3, 10)
    keep, report = select_neurons(importance, 0.3, "per_layer")  # floor(0.3 * 10) = 3, not 2 from float error
    assert [len(neurons) for neurons in keep.values()] == [7, 7, 7]
    assert report["removed"] == report["removed_requested"] == 9 and report["neurons_after"] == 21
    for layer, neurons in keep.items():  # the least important go
        assert min(importance[layer, neurons]) >= max(importance[layer, sorted(set(range(10)) - set(neurons))])
    keep, report = select_neurons(importance, 0.0, "global")
    assert keep == {layer: list(range(10)) for layer in range(3)} and report["removed"] == 0


def test_select_neurons_global_keeps_a_minimum_share_per_layer(caplog: pytest.LogCaptureFixture) -> None:
    importance = torch.cat([torch.linspace(0.5, 1.0, 40)[None], torch.linspace(0.0, 0.1, 40)[None]])
    with caplog.at_level(logging.WARNING, logger="nerdistill.importance"):
        keep, report = select_neurons(importance, 0.5, "global")  # the 40 lowest are all of layer 1
    minimum = math.ceil(MIN_NEURON_SHARE * 40)
    assert keep == {0: list(range(40)), 1: list(range(40 - minimum, 40))}  # layer 1's most important back
    assert report["removed_requested"] == 40 and report["removed"] == 40 - minimum
    assert report["layers_spared"] == [1] and "layer 1" in caplog.text


def test_layer_summary_reports_the_cut() -> None:
    importance = torch.tensor([[0.1, 0.4, 0.2, 0.3], [0.5, 0.5, float("nan"), float("nan")]])
    summary = layer_summary(importance, {0: [1, 3], 1: [0, 1]})
    assert summary[0]["units"] == 4 and summary[0]["kept"] == 2
    assert summary[0]["highest_removed"] == pytest.approx(0.2) and summary[0]["lowest_kept"] == pytest.approx(0.3)
    assert summary[0]["quantiles"]["q0"] == pytest.approx(0.1) and summary[0]["quantiles"]["q100"] == pytest.approx(0.4)
    assert summary[1]["units"] == 2 and summary[1]["highest_removed"] is None


def test_select_rejects_bad_ratio_and_scope() -> None:
    with pytest.raises(ValueError, match="ratio"):
        select_heads(torch.rand(2, 4), 1.5)
    with pytest.raises(ValueError, match="scope"):
        select_heads(torch.rand(2, 4), 0.2, "everywhere")  # type: ignore[arg-type]


def test_plot_importance_writes_png(tmp_path) -> None:
    importance = torch.rand(LAYERS, HEADS)
    importance[1, 3] = float("nan")
    path = tmp_path / "heads.png"
    plot_importance(importance, {0: [0, 1], 1: [0, 1, 2], 2: [0, 1, 2, 3], 3: [3]}, [FFN] * LAYERS,
                    [32, 40, 64, 20], path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
