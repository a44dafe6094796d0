"""Head and FFN-neuron importance is a mean over examples of |grad x activation|, not |sum over the batch|;
the selection removes the share of units a ratio asks for, rounded over the whole scope."""
from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from transformers import CamembertConfig, CamembertModel

from nerdistill.importance import HeadGates, NeuronGates, score, select_heads, select_neurons

HIDDEN, HEADS, LAYERS, FFN = 32, 4, 2, 48


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    config = CamembertConfig(vocab_size=60, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                             intermediate_size=FFN, max_position_embeddings=64, attn_implementation="eager")
    return CamembertModel(config).eval()


# A fixed readout: the squared output itself would be constant, LayerNorm gives every token unit variance.
READOUT = torch.randn(HIDDEN, generator=torch.Generator().manual_seed(2))


def _signed_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over examples of sign_b x (mean over example b's real tokens of a squared readout)."""
    mask = batch["attention_mask"].float()  # (B, T)
    hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    per_example = ((hidden @ READOUT).pow(2) * mask).sum(dim=1) / mask.sum(dim=1)  # (B,)
    return (per_example * batch["sign"]).mean()


def _batch(rows: list[list[int]], signs: list[float]) -> dict[str, torch.Tensor]:
    width = max(map(len, rows))
    input_ids = torch.tensor([row + [1] * (width - len(row)) for row in rows])  # 1 = CamemBERT's pad id
    attention_mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "sign": torch.tensor(signs)}


def test_opposite_gradients_of_two_examples_do_not_cancel() -> None:
    model = _tiny()
    # The same line twice, its loss counted once with + and once with -: every gradient cancels over the batch.
    batch = _batch([[5, 17, 23, 42, 8]] * 2, [1.0, -1.0])
    heads = HeadGates(model, torch.ones(LAYERS, HEADS, requires_grad=True))
    neurons = NeuronGates(model, torch.ones(LAYERS, FFN, requires_grad=True))
    with heads, neurons:
        batch_sums = torch.autograd.grad(_signed_loss(model, batch), (heads.gates, neurons.gates))
    assert all(grad.abs().max() < 1e-6 for grad in batch_sums), "the old |sum over the batch| is ~0"
    single = score(model, [_batch([[5, 17, 23, 42, 8]], [1.0])], _signed_loss, 1)
    both = score(model, [batch], _signed_loss, 1)
    assert both.heads.min() > 0 and both.neurons.max() > 0
    torch.testing.assert_close(both.heads, single.heads)
    torch.testing.assert_close(both.neurons, single.neurons)


def test_batch_scores_are_the_mean_of_one_example_at_a_time() -> None:
    model = _tiny()
    rows = [[5, 17, 23, 42, 8, 11, 30], [9, 33, 4], [12, 50, 7, 21, 6], [44, 28, 15, 36]]
    signs = [1.0, -1.0, 1.0, -0.5]
    one_at_a_time = score(model, [_batch([row], [sign]) for row, sign in zip(rows, signs)], _signed_loss, len(rows))
    # Padded batches of unequal sizes (3, then 1): each example still counts once, with its own weight.
    batched = score(model, [_batch(rows[:3], signs[:3]), _batch(rows[3:], signs[3:])], _signed_loss, 2)
    assert batched.heads.shape == (LAYERS, HEADS) and batched.neurons.shape == (LAYERS, FFN)
    torch.testing.assert_close(batched.heads, one_at_a_time.heads, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(batched.neurons, one_at_a_time.neurons, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(batched.heads.norm(dim=1), torch.ones(LAYERS))
    assert all(param.grad is None for param in model.parameters())


def test_a_small_ratio_rounds_over_all_layers_not_to_zero_per_layer() -> None:
    # 0.15 of 3 layers x 4 heads: a per-layer floor removes 0; over the scope round(1.8) = 2.
    importance = torch.tensor([[0.5, 0.6, 0.7, 0.8], [0.9, 0.3, 0.95, 0.99], [0.4, 0.85, 0.9, 0.97]])
    keep, report = select_heads(importance, 0.15, "per_layer")
    assert report["removed_requested"] == report["removed"] == 2 and report["warning"] is None
    # Equal remainders: the two layers whose least important head scores lowest lose it.
    assert keep == {0: [0, 1, 2, 3], 1: [0, 2, 3], 2: [1, 2, 3]}


@pytest.mark.parametrize(("ratio", "layers", "units", "removed"), [
    (0.01, 3, 4, 1),    # 0.12 rounds to 0: at least one
    (0.3, 3, 4, 4),     # round(3.6)
    (0.25, 2, 12, 6),   # 0.25 * 12 = 2.9999... per layer stays 3
    (0.125, 1, 4, 1),   # round(0.5) is 1, halves up
    (0.5, 3, 10, 15),
])
def test_removed_is_the_closest_count_to_the_share(ratio: float, layers: int, units: int, removed: int) -> None:
    for scope in ("per_layer", "global"):
        keep, report = select_neurons(torch.rand(layers, units), ratio, scope)
        assert report["removed"] == report["removed_requested"] == removed
        assert sum(map(len, keep.values())) == layers * units - removed


def test_per_layer_moves_what_a_layer_cannot_lose_to_the_others(caplog: pytest.LogCaptureFixture) -> None:
    importance = torch.tensor([[0.1, 0.2, float("nan"), float("nan")], [0.5, 0.6, 0.7, 0.8]])
    with caplog.at_level(logging.WARNING, logger="nerdistill.importance"):
        keep, report = select_heads(importance, 0.75, "per_layer")  # round(4.5) = 5 of 6 heads
    assert keep == {0: [1], 1: [3]}  # each layer keeps its most important head
    assert report["removed_requested"] == 5 and report["removed"] == 4 and report["layers_spared"] == [0]
    assert "layers [0]" in caplog.text


def test_a_ratio_that_can_remove_nothing_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="nerdistill.importance"):
        keep, report = select_heads(torch.rand(3, 1), 0.5, "per_layer")  # one head per layer: none can go
    assert keep == {0: [0], 1: [0], 2: [0]} and report["removed"] == 0
    assert "ratio 0.5 removes none of the 3 heads" in report["warning"]
    assert [record.message for record in caplog.records if "removes none" in record.message]
    assert select_heads(torch.rand(3, 1), 0.0)[1]["warning"] is None  # ratio 0 asks for nothing
