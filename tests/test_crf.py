"""The CRF's math outside the model: batched Viterbi against brute force and pytorch-crf, rows cut
from a longer line decoded without the cut edge's scores, and the one forward-backward pass (log
partition and marginals over the IOB2-valid paths) against brute force."""
from __future__ import annotations

import itertools

import pytest
import torch
from torchcrf import CRF

from nerdistill.crf import chain_terms, iob2_masks, path_scores, viterbi
from nerdistill.labels import allowed_start, allowed_transition


def test_viterbi_finds_the_best_path_by_brute_force():
    generator = torch.Generator().manual_seed(3)
    labels, width = 4, 4
    emissions = torch.randn(2, width, labels, generator=generator)
    start, end = torch.randn(labels, generator=generator), torch.randn(labels, generator=generator)
    transitions = torch.randn(labels, labels, generator=generator)
    mask = torch.tensor([[True] * 4, [True, True, True, False]])
    paths = viterbi(emissions, mask, start, end, transitions)
    for row, length in enumerate([4, 3]):
        def score(path: tuple[int, ...]) -> float:
            total = start[path[0]] + end[path[-1]] + sum(emissions[row, t, j] for t, j in enumerate(path))
            return float(total + sum(transitions[a, b] for a, b in zip(path, path[1:])))
        best = max(itertools.product(range(labels), repeat=length), key=score)
        assert paths[row] == list(best)


def random_masks(generator: torch.Generator, batch: int, width: int) -> torch.Tensor:
    """(B, W) left-packed masks of lengths 1..W, the longest row full."""
    lengths = torch.randint(1, width + 1, (batch,), generator=generator)
    lengths[0] = width
    return torch.arange(width).expand(batch, -1) < lengths.unsqueeze(1)


def test_viterbi_gives_pytorch_crf_paths_on_varied_lengths():
    for seed in range(20):
        generator = torch.Generator().manual_seed(seed)
        crf = CRF(5, batch_first=True)
        for param in crf.parameters():
            param.data = torch.randn(param.shape, generator=generator) * 2
        emissions = torch.randn(6, 9, 5, generator=generator) * 2  # (B, W, L)
        mask = random_masks(generator, 6, 9)
        expected = crf.decode(emissions, mask)
        assert viterbi(emissions, mask, crf.start_transitions.detach(), crf.end_transitions.detach(),
                       crf.transitions.detach()) == expected


def test_rows_cut_from_a_line_decode_without_the_cut_edges_scores():
    generator = torch.Generator().manual_seed(5)
    emissions = torch.randn(4, 6, 3, generator=generator)
    mask = random_masks(generator, 4, 6)
    start, end = torch.randn(3, generator=generator) * 5, torch.randn(3, generator=generator) * 5
    transitions = torch.randn(3, 3, generator=generator)
    starts_line = torch.tensor([True, False, True, False])
    ends_line = torch.tensor([True, True, False, False])
    got = viterbi(emissions, mask, start, end, transitions, starts_line, ends_line)
    zero = torch.zeros(3)
    for row in range(4):
        alone = viterbi(emissions[row:row + 1], mask[row:row + 1], start if starts_line[row] else zero,
                        end if ends_line[row] else zero, transitions)
        assert got[row] == alone[0]


IOB2 = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def brute_force(emissions: torch.Tensor, length: int, start: torch.Tensor, end: torch.Tensor,
                transitions: torch.Tensor, starts: bool, ends: bool) -> tuple[float, torch.Tensor]:
    """(log partition, marginals (length, L)) over every IOB2-valid path of one row, by enumeration."""
    paths, weights = [], []
    for path in itertools.product(range(len(IOB2)), repeat=length):
        names = [IOB2[label] for label in path]
        if (starts and not allowed_start(names[0])) or not all(map(allowed_transition, names, names[1:])):
            continue
        score = (start[path[0]] * starts + end[path[-1]] * ends + sum(emissions[t, j] for t, j in enumerate(path))
                 + sum(transitions[a, b] for a, b in zip(path, path[1:])))
        paths.append(path)
        weights.append(float(score))
    log_partition = torch.logsumexp(torch.tensor(weights, dtype=torch.float64), dim=0)
    marginals = torch.zeros(length, len(IOB2), dtype=torch.float64)
    for path, weight in zip(paths, weights):
        for t, label in enumerate(path):
            marginals[t, label] += (weight - log_partition).exp()
    return float(log_partition), marginals.float()


def test_chain_terms_match_enumerating_every_valid_path():
    generator = torch.Generator().manual_seed(7)
    rows, width, labels = 4, 4, len(IOB2)
    # Large scores: the rescaled recursion must not overflow where a logsumexp would not.
    emissions = torch.randn(rows, width, labels, generator=generator) * 30
    start, end = torch.randn(labels, generator=generator) * 5, torch.randn(labels, generator=generator) * 5
    transitions = torch.randn(labels, labels, generator=generator) * 5
    mask = torch.tensor([[True] * 4, [True] * 3 + [False], [True, False, False, False], [True] * 4])
    starts_line, ends_line = torch.tensor([True, False, True, False]), torch.tensor([True, True, False, False])
    log_partition, marginals = chain_terms(emissions, mask, start, end, transitions, *iob2_masks(IOB2),
                                           starts_line, ends_line)
    for row in range(rows):
        length = int(mask[row].sum())
        expected_z, expected_marginals = brute_force(emissions[row], length, start, end, transitions,
                                                     bool(starts_line[row]), bool(ends_line[row]))
        assert float(log_partition[row]) == pytest.approx(expected_z, rel=1e-5)
        assert torch.allclose(marginals[row, :length], expected_marginals, atol=1e-4)
    # An I- label never follows O, nor opens a line that starts there.
    assert float(marginals[0, 0, IOB2.index("I-PER")]) == 0.0


def test_marginals_are_the_gradient_of_the_log_partition():
    # d log Z / d emission[t, j] = P(word t has label j): the two outputs agree with each other.
    generator = torch.Generator().manual_seed(8)
    emissions = torch.randn(3, 6, len(IOB2), generator=generator, requires_grad=True)
    start, end, transitions = (torch.randn(shape, generator=generator) for shape in ((5,), (5,), (5, 5)))
    mask = random_masks(generator, 3, 6)
    log_partition, marginals = chain_terms(emissions, mask, start, end, transitions, *iob2_masks(IOB2))
    (gradient,) = torch.autograd.grad(log_partition.sum(), emissions)
    assert torch.allclose(gradient[mask], marginals[mask], atol=1e-5)
    assert torch.all(gradient[~mask] == 0)


def test_path_scores_add_up_a_paths_scores_with_the_cut_edges_left_out():
    generator = torch.Generator().manual_seed(9)
    emissions = torch.randn(2, 3, 5, generator=generator)
    start, end, transitions = (torch.randn(shape, generator=generator) for shape in ((5,), (5,), (5, 5)))
    tags = torch.tensor([[1, 2, 0], [3, 4, 2]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    got = path_scores(emissions, tags, mask, start, end, transitions, torch.tensor([True, False]),
                      torch.tensor([True, True]))
    first = start[1] + emissions[0, 0, 1] + transitions[1, 2] + emissions[0, 1, 2] + transitions[2, 0] \
        + emissions[0, 2, 0] + end[0]
    second = emissions[1, 0, 3] + transitions[3, 4] + emissions[1, 1, 4] + end[4]
    assert torch.allclose(got, torch.stack([first, second]))
