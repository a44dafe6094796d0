"""Head and FFN-neuron importance is a mean over examples of |grad x activation|, not |sum over the batch|."""
from __future__ import annotations

import torch
from torch import nn
from transformers import CamembertConfig, CamembertModel

from nerdistill.importance import HeadGates, NeuronGates, score

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
