import itertools
import math

import pytest
import torch

from nerdistill.labels import (IMPOSSIBLE, allowed_start, allowed_transition, entity_types,
                               expected_transition_counts, student_labels, shared_space, transition_prior)
from nerdistill.text import drop_types, iob1_to_iob2

IO_TEACHER = {0: "O", 1: "I-LOC", 2: "I-PER", 3: "I-MISC", 4: "I-ORG"}
STUDENT = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


def test_student_labels_from_io_teacher():
    assert student_labels(IO_TEACHER, ["MISC"]) == STUDENT
    assert student_labels(IO_TEACHER, []) == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", *STUDENT[3:]]


def test_student_labels_from_iob2_and_plain_teachers():
    iob2 = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
    assert student_labels(iob2, ["MISC"]) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert student_labels({"0": "O", "1": "PER"}, []) == ["O", "B-PER", "I-PER"]


def test_student_labels_rejects_unknown_schemes_and_empty_sets():
    with pytest.raises(ValueError, match="S-PER"):
        student_labels({0: "O", 1: "S-PER"}, [])
    with pytest.raises(ValueError, match="no 'O'"):
        student_labels({0: "I-PER"}, [])
    with pytest.raises(ValueError, match="at least one"):
        student_labels({0: "O", 1: "I-MISC"}, ["MISC"])


def test_entity_types_and_iob2_rules():
    assert entity_types(["O", "I-PER", "B-LOC", "I-LOC"]) == ["LOC", "PER"]
    assert allowed_start("B-PER") and allowed_start("O") and not allowed_start("I-PER")
    assert allowed_transition("B-PER", "I-PER") and allowed_transition("I-PER", "I-PER")
    assert not allowed_transition("O", "I-PER") and not allowed_transition("B-LOC", "I-PER")
    assert allowed_transition("I-PER", "B-LOC") and allowed_transition("B-PER", "O")


def test_shared_space_folds_dropped_types_into_o():
    teacher, student, names = shared_space(IO_TEACHER, dict(enumerate(STUDENT)), ["MISC"])
    assert names == ["O", "LOC", "ORG", "PER"]
    assert teacher.shape == (5, 4) and student.shape == (7, 4)
    assert torch.equal(teacher.sum(1), torch.ones(5)) and torch.equal(student.sum(1), torch.ones(7))
    assert teacher[3].tolist() == [1, 0, 0, 0]  # I-MISC -> O
    assert teacher[2].tolist() == [0, 0, 0, 1]  # I-PER -> PER
    assert student[5].tolist() == student[6].tolist() == [0, 0, 0, 1]  # B-PER, I-PER -> PER
    probs = torch.softmax(torch.randn(3, 5), -1) @ teacher
    assert torch.allclose(probs.sum(-1), torch.ones(3))


def test_shared_space_infers_dropped_and_rejects_mismatches():
    inferred, _, _ = shared_space(IO_TEACHER, dict(enumerate(STUDENT)))
    explicit, _, _ = shared_space(IO_TEACHER, dict(enumerate(STUDENT)), ["MISC"])
    assert torch.equal(inferred, explicit)
    with pytest.raises(ValueError, match="MISC"):
        shared_space(IO_TEACHER, dict(enumerate(STUDENT)), [])
    with pytest.raises(ValueError, match="DATE"):
        shared_space(IO_TEACHER, dict(enumerate(["O", "B-DATE", "I-DATE"])), ["MISC"])


def one_hot(tags: list[str], labels: list[str]) -> torch.Tensor:
    return torch.eye(len(labels))[[labels.index(tag) for tag in tags]]  # (n, L)


def test_transition_prior_log_frequencies_and_impossible_moves():
    labels = ["O", "B-PER", "I-PER"]
    lines = [one_hot(["B-PER", "I-PER", "O"], labels), one_hot(["O", "O"], labels)]
    prior = transition_prior(*expected_transition_counts(lines, labels, labels, []), labels)
    assert prior["labels"] == labels
    assert prior["start"][2] == IMPOSSIBLE
    assert math.isclose(prior["start"][0], math.log(2 / 4)) and math.isclose(prior["start"][1], math.log(2 / 4))
    assert prior["transitions"][0][2] == IMPOSSIBLE
    # O occurs 3 times: O->O once, O->B-PER never, ends twice, O->I-PER impossible:
    # (1+1)/(1+0+2+3), (0+1)/6, end (2+1)/6.
    assert math.isclose(prior["transitions"][0][0], math.log(2 / 6))
    assert math.isclose(prior["transitions"][0][1], math.log(1 / 6))
    assert math.isclose(prior["end"][0], math.log(3 / 6))
    assert len(prior["end"]) == 3 and IMPOSSIBLE not in prior["end"]
    for row, end in zip(prior["transitions"], prior["end"]):
        assert math.isclose(sum(math.exp(v) for v in row if v != IMPOSSIBLE) + math.exp(end), 1.0)


def test_end_prior_is_the_chance_of_ending_given_the_label():
    # Every line ends in O; I-PER is frequent (long names) but never last. P(last = I-PER) = 0 and
    # P(last = O) = 1 whatever the counts; P(end | label) is what a CRF's end score means.
    labels = ["O", "B-PER", "I-PER"]
    line = ["O", "B-PER", *["I-PER"] * 6, "O"]
    prior = transition_prior(*expected_transition_counts([one_hot(line, labels)] * 20, labels, labels, []), labels)
    end = dict(zip(labels, prior["end"]))
    # O: 40 occurrences, 20 last, 20 -> B-PER: (20+1)/(1+21+21). I-PER: 120, none last: 1/(21+1+101+1).
    assert math.isclose(end["O"], math.log(21 / 43)) and math.isclose(end["I-PER"], math.log(1 / 124))
    assert end["I-PER"] < end["O"] - 3
    for row, row_end in zip(prior["transitions"], prior["end"]):
        assert math.isclose(sum(math.exp(v) for v in row if v != IMPOSSIBLE) + math.exp(row_end), 1.0)
    # Soft distributions too: the rows stay normalised jointly with the end.
    soft = [torch.randn(n, 3, generator=torch.Generator().manual_seed(n)).softmax(-1) for n in (1, 3, 5)]
    prior = transition_prior(*expected_transition_counts(soft, labels, labels, []), labels)
    for row, row_end in zip(prior["transitions"], prior["end"]):
        assert math.isclose(sum(math.exp(v) for v in row if v != IMPOSSIBLE) + math.exp(row_end), 1.0)


def test_expected_counts_are_the_mean_counts_over_every_teacher_labelling():
    teacher = [IO_TEACHER[i] for i in range(5)]  # IO: O, I-LOC, I-PER, I-MISC, I-ORG; MISC dropped
    generator = torch.Generator().manual_seed(0)
    lines = [torch.randn(length, 5, generator=generator).mul(2).softmax(-1) for length in (4, 1, 2)]
    start, end, moves = expected_transition_counts(lines, teacher, STUDENT, ["MISC"])
    want_start, want_end, want_moves = torch.zeros(7), torch.zeros(7), torch.zeros(7, 7)
    for probs in lines:
        for labelling in itertools.product(range(5), repeat=len(probs)):
            weight = float(torch.prod(probs[torch.arange(len(probs)), list(labelling)]))
            ids = [STUDENT.index(tag) for tag in drop_types(iob1_to_iob2([teacher[i] for i in labelling]), ["MISC"])]
            want_start[ids[0]] += weight
            want_end[ids[-1]] += weight
            for previous, following in zip(ids, ids[1:]):
                want_moves[previous, following] += weight
    assert torch.allclose(start.float(), want_start, atol=1e-6) and torch.allclose(end.float(), want_end, atol=1e-6)
    assert torch.allclose(moves.float(), want_moves, atol=1e-6)
    assert math.isclose(float(moves.sum()), 3 + 0 + 1, rel_tol=1e-6)  # one move per pair of neighbours
    # Uncertain words spread the counts over moves a count of argmax tags never sees.
    argmax = [one_hot([teacher[i] for i in probs.argmax(-1).tolist()], teacher) for probs in lines]
    hard = expected_transition_counts(argmax, teacher, STUDENT, ["MISC"])[2]
    assert (moves > 0).sum() > (hard > 0).sum()