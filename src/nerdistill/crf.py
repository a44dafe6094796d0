"""The linear-chain CRF's math over words, outside any model: IOB2 constraints, the edge scores of
rows cut from a line, one forward-backward pass giving the log-partition (CE) and the marginals
(KD), path scores, and Viterbi decoding, plus `CrfWeights`, what a tagger decodes with (numpy and
torch only). Training and decoding see the same paths: IOB2-impossible moves are excluded from
the normaliser and the marginals, and forbidden in Viterbi.

Conventions shared by every function here: emissions (B, W, L) over left-packed words, mask (B, W),
transitions[i, j] scoring label i followed by label j (as in pytorch-crf), and start and end scores
that belong to a line's edges only: a row cut from a longer line (`starts_line` / `ends_line` False,
data.Window) gets none where the cut is, as `modeling.CrfStudent` trains it.
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
    start_ok, move_ok = iob2_masks(labels)
    start = start.detach().masked_fill(~start_ok.to(transitions.device), FORBIDDEN)
    moves = transitions.detach().masked_fill(~move_ok.to(transitions.device), FORBIDDEN)
    return start, end.detach(), moves


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
    an entity), rows whose `ends_line` is False no end score, as `chain_terms` trains them.

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


def chain_terms(emissions: torch.Tensor, mask: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
                transitions: torch.Tensor, allowed_start: torch.Tensor, allowed_moves: torch.Tensor,
                starts_line: torch.Tensor | None = None, ends_line: torch.Tensor | None = None,
                with_marginals: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log partition (R,), per-word marginals (R, W, L) or None) of the IOB2-constrained CRF, from one
    forward and one backward pass: the CE term's normaliser and the KD term's distribution come out
    of the same recursion, over the paths decoding can take (impossible moves excluded, as `viterbi`
    forbids them). Differentiable in every score.

    emissions (R, W, L) over left-packed words, mask (R, W); start, end (L,) or per row (R, L);
    transitions (L, L) or (R, L, L); `allowed_start` (L,) and `allowed_moves` (L, L) bool from
    `iob2_masks`. A row cut from a longer line gets no start score (nor the start constraint: a cut
    may fall inside an entity) where it is cut, no end score at a cut end. Marginals past a row's end
    are meaningless; callers mask them.

    The recursion runs in probability space, rescaled at every word: one small batched matmul per
    word instead of a logsumexp over (R, L, L), so each of the 2W sequential steps is a couple of
    kernels, in the forward pass and in autograd's backward alike (on a GPU these steps are bound by
    kernel launches, not arithmetic). Scores are shifted by their maximum before `exp`, so nothing
    overflows; a word whose every reachable label is more than ~80 nats below its best emission
    would underflow, which no trained model's scores come near.
    """
    rows, width, num_labels = emissions.shape
    emissions = emissions.float()
    real = mask.bool()
    start, end, transitions = (score.float().expand(rows, *score.shape[-dims:])
                               for score, dims in ((start, 1), (end, 1), (transitions, 2)))
    start_ok = allowed_start.to(emissions.device).expand(rows, num_labels)
    if starts_line is not None:
        cut = ~starts_line.bool().unsqueeze(1)  # (R, 1)
        start = start.masked_fill(cut, 0.0)
        start_ok = start_ok | cut
    if ends_line is not None:
        end = end.masked_fill(~ends_line.bool().unsqueeze(1), 0.0)

    def rescaled(score: torch.Tensor, dims: tuple[int, ...], allowed: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        # exp(score - its max) in (0, 1], and the max, detached: it cancels out of every ratio.
        shift = score.detach().amax(dim=dims, keepdim=True)
        weights = torch.exp(score - shift)
        return (weights if allowed is None else weights * allowed), shift

    emit, emit_shift = rescaled(emissions, (2,))  # (R, W, L), (R, W, 1)
    moves, move_shift = rescaled(transitions, (1, 2), allowed_moves.to(emissions.device))  # (R, L, L), (R, 1, 1)
    first, start_shift = rescaled(start, (1,), start_ok)  # (R, L)
    last, end_shift = rescaled(end, (1,))
    # Past a row's end a step is the identity: alpha stays the row's last word's, beta stays the end.
    # Unbound once: indexing the stacked tensor per word would make autograd write a full-size
    # gradient for every word (quadratic in the width).
    steps = torch.where(real[:, 1:, None, None], moves.unsqueeze(1) * emit[:, 1:].unsqueeze(2),
                        torch.eye(num_labels, device=emissions.device)).unbind(1)  # W - 1 x (R, L, L)

    alpha = first * emit[:, 0]
    norms = [alpha.sum(dim=1, keepdim=True)]
    alphas = [alpha / norms[0]]
    for t in range(width - 1):
        alpha = torch.bmm(alphas[-1].unsqueeze(1), steps[t]).squeeze(1)
        norms.append(alpha.sum(dim=1, keepdim=True).clamp_min(torch.finfo(alpha.dtype).tiny))
        alphas.append(alpha / norms[-1])
    closing = (alphas[-1] * last).sum(dim=1)  # (R,)
    lengths = real.sum(dim=1)
    log_partition = (torch.cat(norms, dim=1).log().sum(dim=1) + closing.log()
                     + (emit_shift.squeeze(2) * real).sum(dim=1) + move_shift.view(rows) * (lengths - 1).clamp_min(0)
                     + start_shift.view(rows) + end_shift.view(rows))
    if not with_marginals:
        return log_partition, None

    betas = [last / last.sum(dim=1, keepdim=True)]
    for t in range(width - 2, -1, -1):
        beta = torch.bmm(steps[t], betas[-1].unsqueeze(2)).squeeze(2)
        betas.append(beta / beta.sum(dim=1, keepdim=True).clamp_min(torch.finfo(beta.dtype).tiny))
    joint = torch.stack(alphas, dim=1) * torch.stack(betas[::-1], dim=1)  # (R, W, L)
    marginals = joint / joint.sum(dim=2, keepdim=True).clamp_min(torch.finfo(joint.dtype).tiny)
    return log_partition, marginals


def path_scores(emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor, start: torch.Tensor,
                end: torch.Tensor, transitions: torch.Tensor, starts_line: torch.Tensor | None = None,
                ends_line: torch.Tensor | None = None) -> torch.Tensor:
    """Score (R,) of each row's tag path (tags (R, W), any value past the row's end), with the same
    edge rules as `chain_terms`; all rows at once, no loop over words."""
    emissions = emissions.float()
    real = mask.to(emissions.dtype)
    rows = torch.arange(tags.size(0), device=tags.device)
    score = (emissions.gather(2, tags.unsqueeze(2)).squeeze(2) * real).sum(dim=1)
    score = score + (transitions.float()[tags[:, :-1], tags[:, 1:]] * real[:, 1:]).sum(dim=1)
    first = start.float()[tags[:, 0]]
    last_tag = tags[rows, (mask.sum(dim=1) - 1).clamp_min(0)]
    closing = end.float()[last_tag]
    if starts_line is not None:
        first = first * starts_line.to(first.dtype)
    if ends_line is not None:
        closing = closing * ends_line.to(closing.dtype)
    return score + first + closing


def iob2_masks(labels: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(allowed_start (L,), allowed_moves (L, L)) bool: where IOB2 lets a line start, label i precede label j."""
    return (torch.tensor([allowed_start(name) for name in labels]),
            torch.tensor([[allowed_transition(prev, nxt) for nxt in labels] for prev in labels]))
