import math

import pytest
import torch

from nerdistill.labels import (IMPOSSIBLE, allowed_start, allowed_transition, entity_types, student_labels,
                               shared_space, transition_prior)

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


def test_transition_prior_log_frequencies_and_impossible_moves():
    labels = ["O", "B-PER", "I-PER"]
    prior = transition_prior([["B-PER", "I-PER", "O"], ["O", "O"]], labels)
    assert prior["labels"] == labels
    assert prior["start"][2] == IMPOSSIBLE
    assert math.isclose(prior["start"][0], math.log(2 / 4)) and math.isclose(prior["start"][1], math.log(2 / 4))
    assert prior["transitions"][0][2] == IMPOSSIBLE
    # From O: O->O once, O->B-PER never, O->I-PER impossible: (1+1)/(1+2), (0+1)/(1+2).
    assert math.isclose(prior["transitions"][0][0], math.log(2 / 3))
    assert math.isclose(prior["transitions"][0][1], math.log(1 / 3))
    for row in prior["transitions"]:
        assert math.isclose(sum(math.exp(v) for v in row if v != IMPOSSIBLE), 1.0)
    assert len(prior["end"]) == 3 and IMPOSSIBLE not in prior["end"]
    with pytest.raises(ValueError, match="B-LOC"):
        transition_prior([["B-LOC"]], labels)
