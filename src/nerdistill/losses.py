"""The four distillation losses (Patient KD) and the curriculum that weights them.

Every loss works on word-level tensors (B, W, ...) except the hidden-state loss, which
compares sub-token states (B, T, H). `distillation_loss` is the single place where the
weighted total is formed: the Trainer (distill, finetune) and head-importance scoring
(prune) both call it, so the three stages optimise and measure the same objective.

    total = w_ce * CE + w_kd * KD + w_hidden * Hidden + w_crf * CRF

Each term is a mean on one scale, so a weight means what it says:
- CE, per word: CRF negative log-likelihood of the teacher's labels (annotate wrote them),
  summed over the batch and divided by its real words.
- KD, per word, x T^2: KL(teacher || student) at temperature T (Hinton et al., 2015), the student's
  side being its CRF's per-word marginals, computed in a label space both models share (see
  `DistillContext.build`).
- Hidden, per sub-token and layer pair: 1 - cosine between mapped teacher and student layers.
- CRF, per allowed transition score: mean squared difference between the student's start, end
  and transition scores and the teacher's transition prior (log frequencies of the moves its
  per-word distributions expect, transitions.json; the teacher has no CRF). IOB2-impossible moves
  are left out: decoding forbids them whatever their score.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from nerdistill import labels
from nerdistill.modeling import StudentOutput
from nerdistill.params import Weights


# Probabilities are clamped before the log: the shared-space sums are exact zeros only
# when the model is certain, and log(0) would turn a finite KL into NaN gradients.
_EPS = 1e-12


def kd_loss(student_marginals: torch.Tensor, teacher_logits: torch.Tensor, word_mask: torch.Tensor,
            student_to_shared: torch.Tensor, teacher_to_shared: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) in the shared label space, x T^2, mean over real words.

    The student's distribution is its CRF's per-word marginal at temperature T (`CrfStudent.crf_terms`:
    emissions and transition scores all divided by T), what it actually predicts, not a softmax of its
    emissions: fitting the emissions alone to the teacher, the transition scores then counted the prior
    a second time and the student under-tagged (real stand-in, docs/results.md).

    student_marginals (B, W, Ls), teacher_logits (B, W, Lt); the *_to_shared matrices are
    0/1 with one 1 per row, (Ls, S) and (Lt, S): summing probabilities through them turns a
    distribution over a model's labels into one over the S shared classes.
    """
    p_teacher = F.softmax(teacher_logits.float() / temperature, dim=-1) @ teacher_to_shared  # (B, W, S)
    p_student = student_marginals.float() @ student_to_shared  # (B, W, S)
    kl = (p_teacher * (p_teacher.clamp_min(_EPS).log() - p_student.clamp_min(_EPS).log())).sum(-1)  # (B, W)
    mask = word_mask.to(kl.dtype)
    return (kl * mask).sum() / mask.sum().clamp_min(1.0) * temperature ** 2


def hidden_loss(student_hidden: tuple[torch.Tensor, ...], teacher_hidden: tuple[torch.Tensor, ...],
                pairs: list[tuple[int, int]], attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over (teacher_layer, student_layer) pairs of (1 - cosine), averaged over real sub-tokens.

    Hidden-state tuples index 0 = embeddings, i = layer i, so 1-based layer numbers index
    them directly. Student states come in the teacher's width (the student projects them).
    """
    for teacher_layer, student_layer in pairs:
        if not (0 <= teacher_layer < len(teacher_hidden) and 0 <= student_layer < len(student_hidden)):
            raise ValueError(f"train.layer_map pair (teacher {teacher_layer}, student {student_layer}) is out of "
                             f"range: the teacher has {len(teacher_hidden) - 1} layers and the student "
                             f"{len(student_hidden) - 1}")
    mask = attention_mask.float()  # (B, T)
    losses = []
    for teacher_layer, student_layer in pairs:
        student_state = student_hidden[student_layer]  # (B, T, Ht)
        cosine = F.cosine_similarity(student_state.float(), teacher_hidden[teacher_layer].float(), dim=-1)  # (B, T)
        losses.append(((1.0 - cosine) * mask).sum() / mask.sum().clamp_min(1.0))
    return torch.stack(losses).mean()


def transition_loss(crf_scores: tuple[torch.Tensor, torch.Tensor, torch.Tensor], prior_start: torch.Tensor,
                    prior_end: torch.Tensor, prior_transitions: torch.Tensor, allowed_start: torch.Tensor,
                    allowed_moves: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between the CRF's (start (L,), end (L,), transitions (L, L)) scores and
    the prior, over the allowed starts and moves (0/1 masks of the same shapes) and every end."""
    start, end, transitions = crf_scores
    squared = torch.cat([((start - prior_start).pow(2) * allowed_start).flatten(), (end - prior_end).pow(2).flatten(),
                         ((transitions - prior_transitions).pow(2) * allowed_moves).flatten()])
    return squared.sum() / (allowed_start.sum() + end.numel() + allowed_moves.sum())


class Curriculum(NamedTuple):
    """A stage's loss weights: `first` in epochs [0, first_epochs) (0-based, as Trainer counts), then `then`.
    distill follows its two phases (`distill.phase*`); prune and finetune use `finetune.weights` throughout."""
    first_epochs: int
    first: Weights
    then: Weights

    @classmethod
    def constant(cls, weights: Weights) -> Curriculum:
        return cls(0, weights, weights)

    def weights(self, epoch: float) -> Weights:
        return self.first if epoch < self.first_epochs else self.then


@dataclass
class LossParts:
    total: torch.Tensor
    ce: torch.Tensor
    kd: torch.Tensor
    hidden: torch.Tensor
    crf: torch.Tensor


@dataclass
class DistillContext:
    """What the losses need beyond the two models' outputs; built once per stage from its curriculum."""

    temperature: float
    curriculum: Curriculum
    layer_pairs: list[tuple[int, int]]  # (teacher layer, student layer), 1-based
    student_to_shared: torch.Tensor  # (Ls, S)
    teacher_to_shared: torch.Tensor  # (Lt, S)
    shared_names: list[str]
    prior_start: torch.Tensor  # (Ls,)
    prior_end: torch.Tensor  # (Ls,)
    prior_transitions: torch.Tensor  # (Ls, Ls)
    allowed_start: torch.Tensor  # (Ls,) 1 where IOB2 lets a line start
    allowed_moves: torch.Tensor  # (Ls, Ls) 1 where IOB2 lets label i precede label j

    @classmethod
    def build(cls, student_id2label: dict[int, str], student_layers: int, teacher_id2label: dict[int, str],
              transitions: dict[str, Any], layer_map_pairs: list[tuple[int, int]], temperature: float,
              curriculum: Curriculum) -> DistillContext:
        """Shared label space, transition prior (checked against the student's labels) and layer pairs,
        on the CPU until the first loss moves them to the student's device.

        The shared space has one class per entity type the student keeps plus O: the
        student's B-X and I-X both count as X, and teacher types the student does not keep
        (`annotate.drop_types`) count as O, which is what annotate turned them into.
        """
        _check_pairs(layer_map_pairs, student_layers)
        dropped = set(labels.entity_types(teacher_id2label.values())) - set(
            labels.entity_types(student_id2label.values()))
        teacher_to_shared, student_to_shared, names = labels.shared_space(teacher_id2label, student_id2label,
                                                                          sorted(dropped))
        names_in_order = labels.check_prior_labels(transitions, student_id2label)

        def tensor(value: Any) -> torch.Tensor:
            return torch.as_tensor(value, dtype=torch.float32)

        return cls(temperature=temperature, curriculum=curriculum,
                   layer_pairs=[(int(t), int(s)) for t, s in layer_map_pairs],
                   student_to_shared=tensor(student_to_shared), teacher_to_shared=tensor(teacher_to_shared),
                   shared_names=list(names), prior_start=tensor(transitions["start"]),
                   prior_end=tensor(transitions["end"]), prior_transitions=tensor(transitions["transitions"]),
                   allowed_start=tensor([labels.allowed_start(name) for name in names_in_order]),
                   allowed_moves=tensor([[labels.allowed_transition(a, b) for b in names_in_order]
                                         for a in names_in_order]))

    def crf_prior(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The prior's (start (Ls,), end (Ls,), transitions (Ls, Ls)) scores, in the student's label order."""
        return self.prior_start, self.prior_end, self.prior_transitions

    def to(self, device: str | torch.device) -> DistillContext:
        """Move the tensors in place (once: later calls on the same device cost nothing)."""
        for name in ("student_to_shared", "teacher_to_shared", "prior_start", "prior_end", "prior_transitions",
                     "allowed_start", "allowed_moves"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def weights(self, epoch: float) -> Weights:
        """The loss weights at `epoch` (0-based, fractional, as Trainer's state.epoch)."""
        return self.curriculum.weights(epoch)

    def needs_hidden(self, weights: Weights) -> bool:
        """Whether both models must return hidden states for these weights."""
        return weights.hidden > 0 and bool(self.layer_pairs)


def distillation_loss(student_out: StudentOutput, teacher_logits: torch.Tensor,
                      teacher_hidden: tuple[torch.Tensor, ...] | None, batch: dict[str, torch.Tensor],
                      weights: Weights, ctx: DistillContext) -> LossParts:
    """The weighted sum of the four losses, and each part for logging.

    `student_out` must come from `student(**batch)` with labels (its loss is the CE part) and, when
    the KD weight is > 0, `kd_temperature=ctx.temperature` (its marginals are the KD part); when the
    hidden weight is > 0 both models must have returned hidden states.
    """
    w_ce, w_kd, w_hidden, w_crf = weights
    word_mask = batch["word_mask"]
    emissions = student_out.emissions  # (B, W, Ls)
    # The context is often built before Trainer moves the student to its device.
    ctx.to(emissions.device)
    if student_out.loss is None:
        raise ValueError("the student's forward was run without labels, so it has no CE loss; pass labels")
    ce = student_out.loss
    if student_out.marginals is not None:
        kd = kd_loss(student_out.marginals, teacher_logits, word_mask, ctx.student_to_shared, ctx.teacher_to_shared,
                     ctx.temperature)
    elif w_kd > 0:
        raise ValueError("KD loss weight > 0 but the student returned no marginals; run it with "
                         "kd_temperature=ctx.temperature")
    else:
        kd = emissions.new_zeros(())
    if w_hidden > 0 and (student_out.hidden_states is None or teacher_hidden is None):
        raise ValueError("hidden-state loss weight > 0 but hidden states are missing; run both models "
                         "with output_hidden_states=True")
    if student_out.hidden_states is not None and teacher_hidden is not None and ctx.layer_pairs:
        hidden = hidden_loss(student_out.hidden_states, teacher_hidden, ctx.layer_pairs, batch["attention_mask"])
    else:
        hidden = emissions.new_zeros(())
    crf = transition_loss(student_out.crf_scores, ctx.prior_start, ctx.prior_end, ctx.prior_transitions,
                          ctx.allowed_start, ctx.allowed_moves)
    total = w_ce * ce + w_kd * kd + w_hidden * hidden + w_crf * crf
    return LossParts(total=total, ce=ce, kd=kd, hidden=hidden, crf=crf)


def _check_pairs(pairs: list[tuple[int, int]], student_layers: int) -> None:
    for teacher_layer, student_layer in pairs:
        if not 1 <= student_layer <= student_layers or teacher_layer < 1:
            raise ValueError(f"train.layer_map pair (teacher {teacher_layer}, student {student_layer}): layer "
                             f"numbers are 1-based and the student has {student_layers} layers")

