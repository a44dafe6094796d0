"""The four distillation losses, the shared label space they use, the curriculum and the total."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torchcrf import CRF
from transformers import CamembertConfig, CamembertForTokenClassification

from nerdistill.labels import (allowed_start, allowed_transition, expected_transition_counts, shared_space,
                               student_labels, transition_prior)
from nerdistill.losses import (Curriculum, DistillContext, distillation_loss, hidden_loss, kd_loss,
                               transition_loss)
from nerdistill.params import Weights
from nerdistill.crf import chain_terms, iob2_masks
from nerdistill.modeling import build_student
from nerdistill.teacher import teacher_forward

TEACHER_LABELS = {0: "O", 1: "I-LOC", 2: "I-PER", 3: "I-MISC", 4: "I-ORG"}
NAMES = student_labels(TEACHER_LABELS, ["MISC"])  # O, B-LOC, I-LOC, B-ORG, I-ORG, B-PER, I-PER
STUDENT_LABELS = dict(enumerate(NAMES))
ONE_HOT = torch.eye(len(NAMES))
PRIOR = transition_prior(*expected_transition_counts(
    [ONE_HOT[[NAMES.index(tag) for tag in tags]] for tags in (["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG"])],
    NAMES, NAMES, []), NAMES)
LAYER_PAIRS = [(1, 1), (2, 2)]

CURRICULUM = Curriculum(1, Weights(1.0, 0.5, 0.1, 0.1), Weights(1.0, 1.0, 0.2, 0.2))


def spaces() -> tuple[torch.Tensor, torch.Tensor]:
    teacher_to_shared, student_to_shared, _ = shared_space(TEACHER_LABELS, STUDENT_LABELS, ["MISC"])
    return student_to_shared, teacher_to_shared


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    config = CamembertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                             intermediate_size=64, max_position_embeddings=64, id2label=TEACHER_LABELS)
    teacher = CamembertForTokenClassification(config).eval()
    student = build_student(teacher, STUDENT_LABELS, [1, 2], dropout=0.0, provenance={})
    return teacher, student


def make_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    word_mask = torch.tensor([[True] * 5, [True, True, False, False, False]])  # (B, W)
    return {"input_ids": torch.randint(5, 100, (2, 8), generator=generator),
            "attention_mask": torch.tensor([[1] * 8, [1] * 4 + [0] * 4]),
            "word_index": torch.tensor([[1, 2, 3, 4, 6], [1, 2, 0, 0, 0]]),
            "word_mask": word_mask,
            "labels": torch.randint(0, len(NAMES), (2, 5), generator=generator).masked_fill(~word_mask, -100)}


def test_shared_space_probabilities_sum_to_one():
    student_to_shared, teacher_to_shared = spaces()
    assert torch.equal(student_to_shared.sum(1), torch.ones(len(NAMES)))
    assert torch.equal(teacher_to_shared.sum(1), torch.ones(len(TEACHER_LABELS)))
    for logits, matrix in ((torch.randn(3, 4, len(NAMES)), student_to_shared),
                           (torch.randn(3, 4, len(TEACHER_LABELS)), teacher_to_shared)):
        shared = logits.softmax(-1) @ matrix  # (B, W, S)
        assert torch.allclose(shared.sum(-1), torch.ones(3, 4))


def test_kd_sees_the_transitions_the_student_decodes_with():
    # The student's side of KD is its CRF's marginals: the same emissions under transition scores
    # that favour the teacher's path come closer to it.
    eye = torch.eye(2)
    emissions = torch.zeros(1, 2, 2)  # (B, W, L): no preference from the emissions alone
    teacher = torch.tensor([[[9.0, -9.0], [-9.0, 9.0]]])  # label 0 then label 1
    mask = torch.ones(1, 2, dtype=torch.bool)
    masks = iob2_masks(["O", "B-PER"])

    def kd_with(transitions: torch.Tensor) -> torch.Tensor:
        _, marginals = chain_terms(emissions, mask, torch.zeros(2), torch.zeros(2), transitions, *masks)
        return kd_loss(marginals, teacher, mask, eye, eye, 1.0)

    favouring, against = torch.tensor([[-5.0, 5.0], [0.0, 0.0]]), torch.tensor([[5.0, -5.0], [0.0, 0.0]])
    assert kd_with(favouring) < kd_with(torch.zeros(2, 2)) < kd_with(against)


def test_kd_is_zero_when_shared_distributions_match():
    student_to_shared, teacher_to_shared = spaces()
    temperature = 2.5
    teacher_logits = torch.randn(2, 5, len(TEACHER_LABELS))  # (B, W, Lt): O, I-LOC, I-PER, I-MISC, I-ORG
    t_o, t_loc, t_per, t_misc, t_org = teacher_logits.unbind(-1)
    # MISC folds into O; B-X and I-X split X's probability in two halves: exp(x/T - log 2) = exp(x/T) / 2.
    half = temperature * math.log(2.0)
    t_o_folded = temperature * torch.logaddexp(t_o / temperature, t_misc / temperature)
    student = torch.stack([t_o_folded, t_loc - half, t_loc - half, t_org - half, t_org - half,
                           t_per - half, t_per - half], dim=-1)  # (B, W, Ls) in NAMES order
    mask = torch.ones(2, 5, dtype=torch.bool)
    loss = kd_loss((student / temperature).softmax(-1), teacher_logits, mask, student_to_shared, teacher_to_shared,
                   temperature)
    assert loss.abs() < 1e-5


def test_kd_matches_a_hand_computation_and_ignores_padding():
    eye = torch.eye(2)
    student = torch.tensor([[[0.0, 0.0], [5.0, -5.0]]])  # (1, 2, 2); the second word is padding
    teacher = torch.tensor([[[math.log(3.0), 0.0], [-9.0, 9.0]]])
    mask = torch.tensor([[True, False]])
    # T = 1: p_t = (3/4, 1/4), p_s = (1/2, 1/2).
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kd_loss(student.softmax(-1), teacher, mask, eye, eye, 1.0).item() == pytest.approx(expected, rel=1e-5)
    # T = 2 softens both and scales by T^2 = 4.
    p_t = torch.tensor([math.log(3.0) / 2, 0.0]).softmax(0)
    expected_t2 = 4 * float((p_t * (p_t / 0.5).log()).sum())
    assert kd_loss((student / 2).softmax(-1), teacher, mask, eye, eye, 2.0).item() == pytest.approx(expected_t2, rel=1e-5)
    assert kd_loss(student.softmax(-1), teacher, mask, eye, eye, 1.0) > 0


def test_hidden_loss_is_zero_for_identical_and_one_for_orthogonal_states():
    states = tuple(torch.randn(2, 3, 4) for _ in range(3))
    mask = torch.ones(2, 3)
    assert hidden_loss(states, states, [(1, 1), (2, 2)], mask).abs() < 1e-6
    x = torch.zeros(2, 3, 4)
    x[..., 0] = 1.0
    y = torch.zeros(2, 3, 4)
    y[..., 1] = 2.0
    assert hidden_loss((x, x), (y, y), [(1, 1)], mask).item() == pytest.approx(1.0)
    # Padded sub-tokens do not count: make them opposite and mask them out.
    z = y.clone()
    z[1, 2] = -x[1, 2]
    padded = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert hidden_loss((x, x), (z, z), [(1, 1)], padded).item() == pytest.approx(1.0)


def test_hidden_loss_projects_to_the_teacher_width_and_rejects_bad_layers():
    student_states = (torch.randn(1, 3, 4), torch.randn(1, 3, 4))
    teacher_states = (torch.randn(1, 3, 6), torch.randn(1, 3, 6))
    projection = torch.nn.Linear(4, 6)
    projected = tuple(projection(state) for state in student_states)  # what a narrower student returns
    loss = hidden_loss(projected, teacher_states, [(1, 1)], torch.ones(1, 3))
    expected = 1 - F.cosine_similarity(projection(student_states[1]), teacher_states[1], dim=-1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="train.layer_map"):
        hidden_loss(projected, teacher_states, [(5, 1)], torch.ones(1, 3))


def test_transition_loss_is_zero_when_equal_and_mean_squared_over_allowed_moves(models):
    _, student = models
    crf = student.crf
    scores = (crf.start_transitions, crf.end_transitions, crf.transitions)
    start, end, moves = (score.detach().clone() for score in scores)
    allowed_first = torch.tensor([allowed_start(name) for name in NAMES], dtype=torch.float32)
    allowed = torch.tensor([[allowed_transition(a, b) for b in NAMES] for a in NAMES], dtype=torch.float32)
    assert transition_loss(scores, start, end, moves, allowed_first, allowed).item() == 0.0
    # O -> I-PER and start -> I-PER are impossible: decoding forbids them, the loss ignores them.
    moves[0, NAMES.index("I-PER")] -= 10.0
    start[NAMES.index("I-PER")] -= 10.0
    assert transition_loss(scores, start, end, moves, allowed_first, allowed).item() == 0.0
    moves[0, 0] += 2.0
    counted = allowed_first.sum() + len(NAMES) + allowed.sum()  # 4 starts, 7 ends, 49 - 3 x 5 moves
    assert counted == 45
    assert transition_loss(scores, start, end, moves, allowed_first, allowed).item() == pytest.approx(4.0 / 45)


def test_curriculum_weights_switch_on_the_zero_based_epoch():
    phase1, phase2 = Weights(1.0, 0.5, 0.1, 0.1), Weights(1.0, 1.0, 0.2, 0.2)
    assert Curriculum(1, phase1, phase2).weights(0.0) == phase1
    assert Curriculum(1, phase1, phase2).weights(0.99) == phase1
    assert Curriculum(1, phase1, phase2).weights(1.0) == phase2
    assert Curriculum(2, phase1, phase2).weights(3.5) == phase2
    assert Curriculum(0, phase1, phase2).weights(0.0) == phase2


def test_crf_nll_is_per_word_over_the_iob2_paths_and_treats_padding_labels_as_masked(models):
    # pytorch-crf with the impossible moves at crf.FORBIDDEN normalises over the paths decoding can take.
    _, student = models
    emissions = torch.randn(2, 5, len(NAMES))
    batch = make_batch()
    tags = [["B-PER", "I-PER", "O", "B-LOC", "I-LOC"], ["O", "B-ORG"]]
    labels = torch.full((2, 5), -100)
    for row, row_tags in enumerate(tags):
        labels[row, :len(row_tags)] = torch.tensor([NAMES.index(tag) for tag in row_tags])
    loss = student.nll(emissions, labels, batch["word_mask"])
    constrained = CRF(len(NAMES), batch_first=True)
    for param, value in zip((constrained.start_transitions, constrained.end_transitions, constrained.transitions),
                            student.constrained_transitions()):
        param.data = value.clone()
    llh = constrained(emissions, labels.clamp_min(0), mask=batch["word_mask"], reduction="sum")
    assert loss.item() == pytest.approx(-llh.item() / batch["word_mask"].sum().item(), rel=1e-5)


def test_ce_does_not_grow_with_sentence_length(models):
    # The same words repeated: a per-sequence mean would double, a per-word one stays put.
    _, student = models
    one = torch.randn(1, 4, len(NAMES))
    labels, mask = torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.bool)
    short = student.nll(one, labels, mask)
    long = student.nll(one.repeat(1, 8, 1), labels.repeat(1, 8), mask.repeat(1, 8))
    assert long.item() == pytest.approx(short.item(), rel=0.25)


def test_distillation_loss_is_the_weighted_sum_of_its_parts(models):
    teacher, student = models
    batch = make_batch()
    context = DistillContext.build(student.config.id2label, 2, TEACHER_LABELS, PRIOR, LAYER_PAIRS, 2.5, CURRICULUM)
    weights = Weights(1.0, 0.5, 0.1, 0.2)
    assert context.needs_hidden(weights) and not context.needs_hidden(Weights(1.0, 1.0, 0.0, 0.2))
    teacher_logits, teacher_hidden = teacher_forward(teacher, batch, output_hidden_states=True)
    out = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  word_index=batch["word_index"], word_mask=batch["word_mask"], labels=batch["labels"],
                  output_hidden_states=True, kd_temperature=context.temperature)
    parts = distillation_loss(out, teacher_logits, teacher_hidden, batch, weights, context)
    expected = parts.ce + 0.5 * parts.kd + 0.1 * parts.hidden + 0.2 * parts.crf
    assert torch.allclose(parts.total, expected)
    assert all(value > 0 for value in (parts.ce, parts.kd, parts.crf))
    # The student's two layers are copies of the teacher's first two: identical states so far.
    assert parts.hidden.item() == pytest.approx(0.0, abs=1e-5)
    deeper = DistillContext.build(student.config.id2label, 2, TEACHER_LABELS, PRIOR, [(4, 2)], 2.5, CURRICULUM)
    assert distillation_loss(out, teacher_logits, teacher_hidden, batch, weights, deeper).hidden > 0
    parts.total.backward()
    assert student.crf.transitions.grad is not None and student.emissions.weight.grad is not None
    with pytest.raises(ValueError, match="output_hidden_states"):
        distillation_loss(out, teacher_logits, None, batch, weights, context)


def test_distill_context_rejects_mismatched_labels_and_layers(models):
    _, student = models
    with pytest.raises(ValueError, match="transitions.json labels"):
        DistillContext.build(student.config.id2label, 2, TEACHER_LABELS, {**PRIOR, "labels": NAMES[::-1]},
                             LAYER_PAIRS, 2.5, CURRICULUM)
    with pytest.raises(ValueError, match="train.layer_map"):
        DistillContext.build(student.config.id2label, 2, TEACHER_LABELS, PRIOR, [(2, 3)], 2.5, CURRICULUM)
    with pytest.raises(ValueError):  # a teacher without the student's LOC type: no shared space
        DistillContext.build(student.config.id2label, 2, {0: "O", 1: "I-PER", 2: "I-ORG"}, PRIOR, LAYER_PAIRS, 2.5,
                             CURRICULUM)
