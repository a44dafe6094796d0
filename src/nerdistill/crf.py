"""The linear-chain CRF's math over words, outside any model: IOB2 constraints, the edge scores of
rows cut from a line, forward-backward marginals and Viterbi decoding, plus `CrfWeights`, what a
tagger decodes with (numpy and torch only).

Conventions shared by every function here: emissions (B, W, L) over left-packed words, mask (B, W),
transitions[i, j] scoring label i followed by label j (as in pytorch-crf), and start and end scores
that belong to a line's edges only: a row cut from a longer line (`starts_line` / `ends_line` False,
data.Window) gets none where the cut is, as `modeling.CrfStudent.nll` trains it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from nerdistill.labels import allowed_start, allowed_transition

# Score given to IOB2-impossible moves at decoding time: low enough that Viterbi never takes
# them while a legal path exists (O and B-X are always legal), finite so that no NaN appears.
FORBIDDEN = -1e4


@dataclass(frozen=True)
class CrfWeights:
    """Decoding weights of a CRF with the IOB2 constraints already applied (impossible moves at FORBIDDEN)."""

    start: torch.Tensor  # (L,)
    end: torch.Tensor  # (L,)
    transitions: torch.Tensor  # (L, L), [previous, next]

    def decode(self, emissions: torch.Tensor, batch: dict[str, torch.Tensor]) -> list[list[int]]:
        """The best path of each window of a collated batch (data.NerCollator); windows cut from a
        longer line get no start or end score where the cut is, as in training."""
        return viterbi(emissions, batch["word_mask"].bool(), self.start, self.end, self.transitions,
                       batch["starts_line"], batch["ends_line"])


def constrain(start: torch.Tensor, end: torch.Tensor, transitions: torch.Tensor, labels: Sequence[str]
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Detached (start (L,), end (L,), transitions (L, L)) with IOB2-impossible moves set to FORBIDDEN."""
    start_ok = torch.tensor([allowed_start(name) for name in labels])
    move_ok = torch.tensor([[allowed_transition(prev, nxt) for nxt in labels] for prev in labels])
    start = start.detach().masked_fill(~start_ok.to(transitions.device), FORBIDDEN)
    moves = transitions.detach().masked_fill(~move_ok.to(transitions.device), FORBIDDEN)
    return start, end.detach(), moves


def cancel_cut_edges(emissions: torch.Tensor, mask: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
                     starts_line: torch.Tensor | None, ends_line: torch.Tensor | None) -> torch.Tensor:
    """Emissions (B, W, L) that cancel the start score of rows cut at their start, the end score of
    rows cut at their end. pytorch-crf always adds start[y_0] and end[y_last]; subtracting them from
    those words' emissions removes them from the path score and the normaliser alike (so from the
    gradient)."""
    if starts_line is None and ends_line is None:
        return emissions
    width = emissions.size(1)
    positions = torch.arange(width, device=emissions.device)  # (W,)
    if starts_line is not None:
        cut = (~starts_line.bool()).to(emissions.dtype).unsqueeze(1)  # (B, 1)
        first = (positions == 0).to(emissions.dtype).view(1, width, 1)  # (1, W, 1)
        emissions = emissions - first * (cut * start).unsqueeze(1)
    if ends_line is not None:
        cut = (~ends_line.bool()).to(emissions.dtype).unsqueeze(1)  # (B, 1)
        last = (positions == mask.sum(dim=1, keepdim=True) - 1).to(emissions.dtype).unsqueeze(2)  # (B, W, 1)
        emissions = emissions - last * (cut * end).unsqueeze(1)
    return emissions


def crf_log_marginals(emissions: torch.Tensor, mask: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
                      transitions: torch.Tensor, starts_line: torch.Tensor | None = None,
                      ends_line: torch.Tensor | None = None) -> torch.Tensor:
    """log P(label of word t = j | sentence) under the linear-chain CRF, (B, W, L), by forward-backward.

    Same conventions as `viterbi` (left-packed mask, edge scores only on the line's edges). Values
    past a row's end are meaningless; callers mask them. Differentiable in every score."""
    start, end = _line_edge_scores(start, end, starts_line, ends_line)
    width = emissions.size(1)
    alpha = [start + emissions[:, 0]]  # alpha[t]: (B, L), paths over words 0..t ending in each label
    for t in range(1, width):
        step = torch.logsumexp(alpha[-1].unsqueeze(2) + transitions, dim=1) + emissions[:, t]  # (B, L)
        alpha.append(torch.where(mask[:, t].unsqueeze(1), step, alpha[-1]))
    # beta[t]: paths over words t+1.. from each label at t; the row's last word gets the end score.
    lengths = mask.sum(dim=1, keepdim=True)  # (B, 1)
    beta = [end.expand_as(alpha[-1])]
    for t in range(width - 2, -1, -1):
        step = torch.logsumexp(transitions + (emissions[:, t + 1] + beta[-1]).unsqueeze(1), dim=2)  # (B, L)
        beta.append(torch.where(t + 1 < lengths, step, end.expand_as(step)))
    scores = torch.stack(alpha, dim=1) + torch.stack(beta[::-1], dim=1)  # (B, W, L)
    return scores - torch.logsumexp(scores, dim=2, keepdim=True)


def _line_edge_scores(start: torch.Tensor, end: torch.Tensor, starts_line: torch.Tensor | None,
                      ends_line: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Start and end scores, (L,) or per row (B, L): zero on rows whose window was cut there."""
    if starts_line is not None:
        start = torch.where(starts_line.bool().unsqueeze(1), start, start.new_zeros(()))  # (B, L)
    if ends_line is not None:
        end = torch.where(ends_line.bool().unsqueeze(1), end, end.new_zeros(()))  # (B, L)
    return start, end


def viterbi(emissions: torch.Tensor, mask: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
            transitions: torch.Tensor, starts_line: torch.Tensor | None = None,
            ends_line: torch.Tensor | None = None) -> list[list[int]]:
    """Batched Viterbi. emissions (B, W, L), mask (B, W) left-packed; returns one path per row.

    transitions[i, j] scores label i followed by label j, as in pytorch-crf. Rows whose
    `starts_line` (B,) is False get no start score (nor the start constraint: a cut may fall inside
    an entity), rows whose `ends_line` is False no end score, as `CrfStudent.nll` trains them.

    The loop runs in numpy on the CPU, whatever the emissions' device: it is one tiny (B, L, L) step
    per word, where a torch call costs ~30 us and a numpy one a few. In torch, decoding a 230-word
    document took 7 ms on 2 CPU threads, a third of the int8 student's latency; on a GPU each step
    is a handful of kernel launches. The scores cross to the CPU in one transfer.
    """
    start, end = _line_edge_scores(start, end, starts_line, ends_line)
    emissions, start, end, transitions = (x.detach().float().cpu().numpy()
                                          for x in (emissions, start, end, transitions))
    lengths = mask.sum(dim=1).cpu().numpy()  # (B,)
    real = mask.cpu().numpy()
    rows, width, num_labels = emissions.shape
    score = start + emissions[:, 0]  # (B, L)
    # Past a row's end its score is frozen and its pointers are the identity, so the final argmax is
    # the label of its last word and walking back from the last column reaches that word unchanged.
    identity = np.arange(num_labels)
    every_row_real = real.all(axis=0)  # (W,)
    backpointers = np.empty((max(width - 1, 0), rows, num_labels), dtype=np.int64)  # (W - 1, B, L)
    for t in range(1, width):
        candidates = score[:, :, None] + transitions  # (B, L prev, L next)
        best_prev = candidates.argmax(axis=1)  # (B, L)
        best = candidates.max(axis=1) + emissions[:, t]
        if every_row_real[t]:
            score, backpointers[t - 1] = best, best_prev
        else:
            step_is_real = real[:, t, None]  # (B, 1)
            score = np.where(step_is_real, best, score)
            backpointers[t - 1] = np.where(step_is_real, best_prev, identity)
    label = (score + end).argmax(axis=1)  # (B,)
    path = np.empty((rows, width), dtype=np.int64)
    path[:, -1] = label
    every_row = np.arange(rows)
    for t in range(width - 2, -1, -1):
        label = backpointers[t][every_row, label]
        path[:, t] = label
    return [path[row, :length].tolist() for row, length in enumerate(lengths.tolist())]
