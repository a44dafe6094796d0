"""The CRF student: built from BERT-family teachers, word-level forward, IOB2-valid decoding,
exact save/load (pruned shapes included) and the teacher helpers."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import (AutoModel, BertConfig, BertForTokenClassification, CamembertConfig,
                          CamembertForTokenClassification)

from torchcrf import CRF

from nerdistill.crf import chain_terms
from nerdistill.labels import allowed_start, allowed_transition, student_labels
from nerdistill.modeling import CrfStudent, StudentConfig, build_student
from nerdistill.teacher import load_teacher, teacher_forward
from nerdistill.pruning import ffn_sizes, head_counts, prune_ffn, prune_heads

TEACHER_LABELS = {0: "O", 1: "I-LOC", 2: "I-PER", 3: "I-MISC", 4: "I-ORG"}
STUDENT_LABELS = dict(enumerate(student_labels(TEACHER_LABELS, ["MISC"])))
VOCAB = 120


def tiny_camembert(layers: int = 6, hidden: int = 48, seed: int = 0) -> CamembertForTokenClassification:
    torch.manual_seed(seed)
    config = CamembertConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                             intermediate_size=64, max_position_embeddings=64, id2label=TEACHER_LABELS)
    return CamembertForTokenClassification(config).eval()


def make_batch(seed: int = 0, batch: int = 3, tokens: int = 12, words: int = 7) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    lengths = [words, 4, 1][:batch]
    word_mask = torch.tensor([[i < n for i in range(words)] for n in lengths])  # (B, W) left-packed
    word_index = torch.where(word_mask, torch.arange(1, words + 1).expand(batch, -1), 0)  # (B, W)
    attention_mask = torch.tensor([[int(i < n + 2) for i in range(tokens)] for n in lengths])  # (B, T)
    # O and B- labels only: any sequence of them is valid IOB2, the paths the CRF normalises over.
    outside = torch.tensor([i for i, name in STUDENT_LABELS.items() if not name.startswith("I-")])
    labels = outside[torch.randint(0, len(outside), (batch, words), generator=generator)].masked_fill(~word_mask, -100)
    return {"input_ids": torch.randint(5, VOCAB, (batch, tokens), generator=generator),
            "attention_mask": attention_mask, "word_index": word_index, "word_mask": word_mask, "labels": labels}


@pytest.fixture(scope="module")
def teacher() -> CamembertForTokenClassification:
    return tiny_camembert()


@pytest.fixture()
def student(teacher: CamembertForTokenClassification) -> CrfStudent:
    return build_student(teacher, STUDENT_LABELS, [1, 3, 5, 6], dropout=0.1, provenance={"run": "test"}).eval()


def test_build_copies_embeddings_and_chosen_layers(teacher, student):
    assert student.config.encoder.num_hidden_layers == 4
    assert student.config.provenance["teacher_layers"] == [1, 3, 5, 6]
    assert student.config.provenance["run"] == "test"
    teacher_state = teacher.base_model.state_dict()
    student_state = student.encoder.state_dict()
    for key, value in student_state.items():
        source = key
        for student_layer, teacher_layer in enumerate([1, 3, 5, 6]):
            source = source.replace(f"encoder.layer.{student_layer}.", f"encoder.layer.{teacher_layer - 1}.", 1) \
                if key.startswith(f"encoder.layer.{student_layer}.") else source
        assert torch.equal(value, teacher_state[source]), key
    # A deep copy: training the student must not move the teacher.
    with torch.no_grad():
        student.encoder.embeddings.word_embeddings.weight.add_(1.0)
    assert not torch.equal(student.encoder.embeddings.word_embeddings.weight,
                           teacher.base_model.embeddings.word_embeddings.weight)


def test_student_first_layer_reproduces_teacher_layer_one(teacher, student):
    batch = make_batch()
    student_out = student(**batch, output_hidden_states=True)
    _, teacher_hidden = teacher_forward(teacher, batch, output_hidden_states=True)
    assert len(student_out.hidden_states) == 5  # embeddings + 4 layers
    real = batch["attention_mask"].bool()
    assert torch.allclose(student_out.hidden_states[1][real], teacher_hidden[1][real], atol=1e-5)


def test_bad_teacher_layer_number_names_the_key(teacher):
    with pytest.raises(ValueError, match=r"student\.teacher_layers.*1\.\.6"):
        build_student(teacher, STUDENT_LABELS, [1, 7], dropout=0.1, provenance={})
    with pytest.raises(ValueError, match=r"student\.teacher_layers"):
        build_student(teacher, STUDENT_LABELS, [0, 2], dropout=0.1, provenance={})


def test_bert_teacher_builds_and_trains_one_step():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, id2label=TEACHER_LABELS)
    teacher = BertForTokenClassification(config).eval()
    student = build_student(teacher, STUDENT_LABELS, [1, 3], dropout=0.0, provenance={})
    assert student.config.encoder.model_type == "bert"
    batch = make_batch()
    loss = student(**batch).loss
    loss.backward()
    assert torch.isfinite(loss) and student.emissions.weight.grad is not None


def test_forward_shapes_and_padding_labels_do_not_matter(student):
    batch = make_batch()
    out = student(**batch)
    assert out.emissions.shape == (3, 7, len(STUDENT_LABELS))
    assert out.hidden_states is None
    relabelled = batch["labels"].masked_fill(~batch["word_mask"], 3)
    assert torch.allclose(student(**{**batch, "labels": relabelled}).loss, out.loss)
    other = batch["labels"].clone()
    other[0, 0] = (other[0, 0] + 1) % len(STUDENT_LABELS)
    assert not torch.allclose(student(**{**batch, "labels": other}).loss, out.loss)


def test_decode_never_breaks_iob2(student):
    names = [STUDENT_LABELS[i] for i in range(len(STUDENT_LABELS))]
    # Transitions that push hard towards illegal moves, so only the constraint can stop them.
    with torch.no_grad():
        student.crf.transitions.uniform_(-1, 1)
        student.crf.transitions[:, [2, 4, 6]] += 5.0
        student.crf.start_transitions[[2, 4, 6]] += 5.0
    for seed in range(30):
        generator = torch.Generator().manual_seed(seed)
        emissions = torch.randn(4, 9, len(names), generator=generator) * 4  # (B, W, L)
        lengths = torch.randint(1, 10, (4,), generator=generator)
        mask = torch.arange(9).expand(4, -1) < lengths.unsqueeze(1)  # (B, W)
        for path, length in zip(student.decode(emissions, mask), lengths.tolist()):
            tags = [names[i] for i in path]
            assert len(tags) == length
            assert allowed_start(tags[0]), tags
            assert all(allowed_transition(a, b) for a, b in zip(tags, tags[1:])), tags


def random_masks(generator: torch.Generator, batch: int, width: int) -> torch.Tensor:
    """(B, W) left-packed masks of lengths 1..W, the longest row full."""
    lengths = torch.randint(1, width + 1, (batch,), generator=generator)
    lengths[0] = width
    return torch.arange(width).expand(batch, -1) < lengths.unsqueeze(1)


def test_constrained_decode_gives_pytorch_crf_paths_with_the_same_constraints(student):
    with torch.no_grad():
        for param in (student.crf.start_transitions, student.crf.end_transitions, student.crf.transitions):
            param.normal_(0, 2)
    reference = CRF(len(STUDENT_LABELS), batch_first=True)
    for param, constrained in zip((reference.start_transitions, reference.end_transitions, reference.transitions),
                                  student.constrained_transitions()):
        param.data = constrained.clone()
    for seed in range(20):
        generator = torch.Generator().manual_seed(seed)
        emissions = torch.randn(5, 8, len(STUDENT_LABELS), generator=generator) * 3
        mask = random_masks(generator, 5, 8)
        assert student.decode(emissions, mask) == reference.decode(emissions, mask)


def test_continuation_rows_lose_the_crf_start_and_end_scores(student):
    batch = make_batch()
    emissions = student(**batch).emissions  # (B, W, L)
    with torch.no_grad():
        student.crf.start_transitions.normal_(0, 3)
        student.crf.end_transitions.normal_(0, 3)

    def nll_with(start: torch.Tensor, end: torch.Tensor, row: int) -> torch.Tensor:
        # pytorch-crf with the IOB2-impossible moves forbidden: the paths the student normalises over.
        crf = CRF(len(STUDENT_LABELS), batch_first=True)
        crf.start_transitions.data, crf.end_transitions.data = start.detach().clone(), end.detach().clone()
        crf.transitions.data = student.constrained_transitions()[2].clone()
        rows = slice(row, row + 1)
        return -crf(emissions[rows].detach(), batch["labels"][rows].clamp_min(0), batch["word_mask"][rows],
                    reduction="sum") / batch["word_mask"][rows].sum()

    crf = student.crf
    zero = torch.zeros_like(crf.start_transitions)
    # A row cut at its start has neither the start score nor the start constraint (a cut may fall in an entity).
    start = student.constrained_transitions()[0]
    for starts, ends, start, end in ((True, True, start, crf.end_transitions),
                                     (False, True, zero, crf.end_transitions),
                                     (True, False, start, zero), (False, False, zero, zero)):
        for row in range(3):
            got = student.nll(emissions[row:row + 1].detach(), batch["labels"][row:row + 1],
                              batch["word_mask"][row:row + 1], torch.tensor([starts]), torch.tensor([ends]))
            assert torch.allclose(got, nll_with(start, end, row), atol=1e-5), (starts, ends, row)
    # Gradient-correct: a batch of middle windows gives the start and end scores no gradient at all.
    student.zero_grad()
    middle = torch.zeros(3, dtype=torch.bool)
    student(**batch, starts_line=middle, ends_line=middle).loss.backward()
    assert crf.start_transitions.grad.abs().max() == 0 and crf.end_transitions.grad.abs().max() == 0
    assert crf.transitions.grad.abs().max() > 1e-3


def test_a_loaded_student_normalises_over_the_iob2_paths(student, tmp_path: Path):
    # from_pretrained builds on the meta device: masks kept as buffers came back uninitialised.
    student.save_pretrained(tmp_path)
    loaded = CrfStudent.from_pretrained(tmp_path)
    names = [student.config.id2label[i] for i in range(student.config.num_labels)]
    allowed_first, allowed_moves = loaded.iob2_masks()
    assert allowed_first.tolist() == [allowed_start(name) for name in names]
    assert allowed_moves.tolist() == [[allowed_transition(a, b) for b in names] for a in names]


def test_save_and_load_round_trip_is_exact(student, tmp_path: Path):
    batch = make_batch()
    with torch.no_grad():
        student.crf.transitions.normal_()
    student.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    for loaded in (CrfStudent.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)):
        assert isinstance(loaded, CrfStudent)
        loaded.eval()
        expected, got = student(**batch).emissions, loaded(**batch).emissions
        assert torch.equal(expected, got)
        assert student.decode(expected, batch["word_mask"]) == loaded.decode(got, batch["word_mask"])
        assert torch.equal(student.crf.transitions, loaded.crf.transitions)


def test_pruned_student_reloads_with_its_smaller_shapes(student, tmp_path: Path):
    counts = prune_heads(student.encoder, {0: [1, 3], 2: [0]})
    student.config.head_counts = counts
    batch = make_batch()
    student.save_pretrained(tmp_path)
    loaded = CrfStudent.from_pretrained(tmp_path).eval()
    assert head_counts(loaded.encoder) == [2, 4, 1, 4]
    assert loaded.encoder.encoder.layer[2].attention.self.query.weight.shape == (12, 48)
    assert torch.equal(student(**batch).emissions, loaded(**batch).emissions)


def test_student_with_uneven_heads_and_ffn_sizes_reloads_identically(student, tmp_path: Path):
    student.config.head_counts = prune_heads(student.encoder, {0: [1, 3], 2: [0], 3: [0, 1, 2]})
    student.config.ffn_sizes = prune_ffn(student.encoder, {0: list(range(0, 64, 3)), 1: [7], 3: list(range(40))})
    assert student.config.ffn_sizes == [22, 1, 64, 40]
    batch = make_batch()
    student.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["ffn_sizes"] == [22, 1, 64, 40]
    loaded = CrfStudent.from_pretrained(tmp_path).eval()
    assert ffn_sizes(loaded.encoder) == [22, 1, 64, 40] and head_counts(loaded.encoder) == [2, 4, 1, 3]
    assert loaded.encoder.encoder.layer[0].output.dense.weight.shape == (48, 22)
    assert torch.equal(student(**batch).emissions, loaded(**batch).emissions)


@pytest.mark.parametrize("key,value", [("head_counts", [4, 4, 0, 4]), ("head_counts", [4, 4, 4]),
                                       ("ffn_sizes", [64, 0, 64, 64]), ("ffn_sizes", [64, 65, 64, 64]),
                                       ("ffn_sizes", [64, 64])])
def test_bad_pruned_sizes_in_config_are_rejected(student, key: str, value: list[int]):
    raw = student.config.to_dict()
    with pytest.raises(ValueError, match=key):
        StudentConfig(**{**raw, key: value})


def test_teacher_forward_gathers_first_subtokens_and_allows_backward(teacher, student):
    batch = make_batch()
    logits, hidden = teacher_forward(teacher, batch, output_hidden_states=False)
    assert hidden is None
    full = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(logits[1, 2], full[1, batch["word_index"][1, 2]])
    # The teacher's outputs feed losses the student backpropagates through.
    student.train()
    loss = (student(**batch).emissions[..., :5] * logits.softmax(-1)).sum()
    loss.backward()


def test_load_teacher_errors_say_what_to_set(tmp_path: Path):
    with pytest.raises(OSError, match="teacher.model_name.*no such folder"):
        load_teacher(tmp_path / "missing")
    with pytest.raises(OSError, match="teacher.model_name.*local folder"):
        load_teacher("nerdistill-tests/no-such-model")


def test_load_teacher_returns_frozen_eval_model(random_teacher_dir: Path):
    model, tokenizer = load_teacher(random_teacher_dir)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert tokenizer("Paris").input_ids


def test_crf_starts_from_the_transition_prior_and_refuses_another_shape(student):
    from nerdistill.labels import expected_transition_counts, transition_prior
    from nerdistill.losses import Curriculum, DistillContext
    from nerdistill.modeling import init_crf_from_prior
    from nerdistill.params import Weights

    names = [STUDENT_LABELS[i] for i in range(len(STUDENT_LABELS))]
    lines = [torch.eye(len(names))[[0, 1, 2, 0]], torch.eye(len(names))[[5, 6, 0]]]  # one-hot teacher distributions
    prior = transition_prior(*expected_transition_counts(lines, names, names, []), names)
    weights = Weights(1.0, 1.0, 0.0, 0.0)
    context = DistillContext.build(student.config.id2label, student.config.encoder.num_hidden_layers,
                                   TEACHER_LABELS, prior, [], 2.0,
                                   Curriculum(0, weights, weights))
    init_crf_from_prior(student, context.crf_prior())
    assert student.crf.start_transitions.tolist() == pytest.approx(prior["start"])
    assert student.crf.end_transitions.tolist() == pytest.approx(prior["end"])
    assert student.crf.transitions.tolist() == [pytest.approx(row) for row in prior["transitions"]]
    start, end, moves = context.crf_prior()
    with pytest.raises(ValueError, match="'transitions' has shape .* re-run annotate"):
        init_crf_from_prior(student, (start, end, moves[:-1]))


def test_one_crf_pass_gives_the_loss_and_the_kd_marginals(student, monkeypatch):
    # pytorch-crf's own forward is never run: the NLL and the marginals at T share one recursion.
    monkeypatch.setattr(CRF, "forward", lambda *args, **kwargs: pytest.fail("pytorch-crf forward ran"))
    batch = make_batch()
    with torch.no_grad():
        out = student(**batch, kd_temperature=2.0)
        alone = student(**batch)
    assert torch.allclose(out.loss, alone.loss) and alone.marginals is None
    start, end, moves = (score / 2.0 for score in (student.crf.start_transitions, student.crf.end_transitions,
                                                  student.crf.transitions))
    _, expected = chain_terms(out.emissions / 2.0, batch["word_mask"], start, end, moves, *student.iob2_masks())
    assert torch.allclose(out.marginals[batch["word_mask"]], expected[batch["word_mask"]], atol=1e-6)
