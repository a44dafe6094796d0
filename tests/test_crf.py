"""The CRF's math outside the model: batched Viterbi against brute force and pytorch-crf, and rows
cut from a longer line decoded without the cut edge's scores."""
from __future__ import annotations

import itertools

import torch
from torchcrf import CRF

from nerdistill.crf import viterbi


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
