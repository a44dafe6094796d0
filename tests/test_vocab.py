"""Vocabulary trimming: corpus segmentation and student outputs unchanged, save/reload, unknown
characters, Unigram (CamemBERT) and WordPiece (BERT) tokenizers, other tokenizers refused."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (AutoModelForTokenClassification, BertConfig, BertForTokenClassification, BertTokenizer,
                          PreTrainedTokenizerFast)

from nerdistill.data import NerCollator, WordTokenizer
from nerdistill.demo.teacher import TEACHER_LABELS
from nerdistill.model_folders import load_tokenizer
from nerdistill.modeling import CrfStudent, build_student, save_student
from nerdistill.text import split_words
from nerdistill.vocab import segmentation_report, trim_student

STUDENT_LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
# The "annotated corpus": few enough lines that trimming removes a good part of a 1000-piece vocabulary.
CORPUS_LINES = 40
HELDOUT_LINES = 400
MODEL_TYPES = {"random_teacher": "Unigram", "bert_teacher": "WordPiece"}


def corpus_sentences(corpus_path: Path, begin: int, end: int) -> list[list[str]]:
    lines = corpus_path.read_text(encoding="utf-8").splitlines()[begin:end]
    return [[word.text for word in split_words(line)] for line in lines if line.strip()]


@pytest.fixture(scope="module")
def corpus(corpus_path: Path) -> list[list[str]]:
    return corpus_sentences(corpus_path, 0, CORPUS_LINES)


@pytest.fixture(scope="module")
def heldout(corpus_path: Path, corpus: list[list[str]]) -> list[list[str]]:
    """Later lines of the sample corpus, written only in characters the trimming corpus uses."""
    alphabet = {char for words in corpus for word in words for char in word}
    sentences = corpus_sentences(corpus_path, CORPUS_LINES, CORPUS_LINES + HELDOUT_LINES)
    return [words for words in sentences if all(set(word) <= alphabet for word in words)]


@pytest.fixture(scope="module")
def bert_teacher_dir(tmp_path_factory: pytest.TempPathFactory, corpus_path: Path) -> Path:
    """A BertTokenizer (WordPiece, uncased, ~800 pieces) trained on the sample corpus and a random
    2-layer BertForTokenClassification beside it."""
    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.train([str(corpus_path)], trainers.WordPieceTrainer(
        vocab_size=800, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False))
    tokenizer = BertTokenizer(vocab=backend.get_vocab())
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                        id2label=dict(enumerate(TEACHER_LABELS)))
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("fixtures") / "bert_teacher"
    BertForTokenClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(params=["unigram", "wordpiece"])
def teacher_dir(request: pytest.FixtureRequest) -> Path:
    """The CamemBERT teacher (SentencePiece Unigram tokenizer) or the BERT one (WordPiece)."""
    return request.getfixturevalue("random_teacher_dir" if request.param == "unigram" else "bert_teacher_dir")


def new_student(teacher_dir: Path) -> CrfStudent:
    teacher = AutoModelForTokenClassification.from_pretrained(teacher_dir)
    return build_student(teacher, STUDENT_LABELS, [1, 2], dropout=0.0, provenance={}).eval()


@torch.no_grad()
def emissions(student: CrfStudent, tokenizer, sentences: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(emissions (B, W, L), input_ids (B, T)) of the student on the windows of `sentences`."""
    words = WordTokenizer(tokenizer, max_length=128, stride=16)
    features = [{"input_ids": window.input_ids, "word_index": window.word_index}
                for sentence in sentences for window in words.windows(sentence)]
    batch = NerCollator(tokenizer.pad_token_id)(features)
    return student.eval()(**batch).emissions, batch["input_ids"]


def test_trim_keeps_corpus_segmentation_and_emissions(teacher_dir, corpus):
    student = new_student(teacher_dir)
    tokenizer = load_tokenizer(teacher_dir)
    before, ids_before = emissions(student, tokenizer, corpus)
    rows = student.encoder.get_input_embeddings().num_embeddings
    hidden = student.config.encoder.hidden_size

    trimmed_student, trimmed, report = trim_student(student, tokenizer, corpus)

    assert report["vocab_before"] == rows and report["vocab_after"] == len(trimmed) < 0.8 * rows
    assert report["rows_kept_share"] == pytest.approx(len(trimmed) / rows)
    assert report["parameters_saved"] == (rows - len(trimmed)) * hidden
    assert report["tokenizer_model"] == MODEL_TYPES[teacher_dir.name]
    assert type(trimmed) is type(tokenizer)
    segmentation = segmentation_report(tokenizer, trimmed, corpus)
    assert segmentation["words_resegmented"] == segmentation["subtokens_changed"] == 0 and segmentation["words"] > 500
    after, ids_after = emissions(trimmed_student, trimmed, corpus)
    assert not torch.equal(ids_before, ids_after)  # the ids were remapped, the rows followed them
    torch.testing.assert_close(after, before)
    for name in ("pad", "unk", "cls", "sep"):
        assert getattr(trimmed, f"{name}_token_id") == getattr(tokenizer, f"{name}_token_id")
    assert trimmed_student.config.encoder.vocab_size == len(trimmed)
    assert trimmed_student.encoder.get_input_embeddings().padding_idx == tokenizer.pad_token_id
    assert trimmed_student.config.provenance["vocab"]["after"] == len(trimmed)


def test_single_character_pieces_and_specials_are_kept(teacher_dir, corpus):
    tokenizer = load_tokenizer(teacher_dir)
    _, trimmed, _ = trim_student(new_student(teacher_dir), tokenizer, corpus)
    vocab = trimmed.get_vocab()
    single = [piece for piece in tokenizer.get_vocab()
              if len(piece) == 1 or (len(piece) == 2 and piece[0] == "▁") or (len(piece) == 3 and piece[:2] == "##")]
    assert len(single) > 20
    assert set(single) <= set(vocab)
    assert set(tokenizer.all_special_tokens) <= set(vocab)
    # Kept pieces keep their relative order: ids are only compacted.
    order = sorted(vocab, key=vocab.get)
    full = tokenizer.get_vocab()
    assert [full[piece] for piece in order] == sorted(full[piece] for piece in order)


def test_trimmed_student_saves_and_reloads(teacher_dir, tokenizer_dir, corpus, tmp_path):
    student = new_student(teacher_dir)
    tokenizer = load_tokenizer(teacher_dir)
    before, _ = emissions(student, tokenizer, corpus)
    trimmed_student, trimmed, report = trim_student(student, tokenizer, corpus)
    save_student(trimmed_student, trimmed, tmp_path / "student")
    # Stale full-vocabulary files beside tokenizer.json (CamemBERT's, BERT's) must not be what loads.
    shutil.copy(tokenizer_dir / "sentencepiece.bpe.model", tmp_path / "student")
    full_vocab = sorted(tokenizer.get_vocab(), key=tokenizer.get_vocab().get)
    (tmp_path / "student" / "vocab.txt").write_text("".join(f"{piece}\n" for piece in full_vocab), encoding="utf-8")

    reloaded = CrfStudent.from_pretrained(tmp_path / "student")
    reloaded_tokenizer = load_tokenizer(tmp_path / "student")

    assert len(reloaded_tokenizer) == report["vocab_after"] == reloaded.config.encoder.vocab_size
    assert reloaded_tokenizer.get_vocab() == trimmed.get_vocab()
    assert reloaded.config.provenance["vocab"] == trimmed_student.config.provenance["vocab"]
    assert reloaded.config.provenance["vocab"]["before"] == report["vocab_before"]
    after, _ = emissions(reloaded, reloaded_tokenizer, corpus)
    torch.testing.assert_close(after, before)


def test_unknown_rate_does_not_rise_in_the_corpus_alphabet(teacher_dir, corpus, heldout):
    tokenizer = load_tokenizer(teacher_dir)
    _, trimmed, _ = trim_student(new_student(teacher_dir), tokenizer, corpus)
    report = segmentation_report(tokenizer, trimmed, heldout)
    assert report["words"] > 1000
    assert report["words_resegmented"] > 0  # held-out words do lose pieces...
    assert report["words_resegmented_share"] == report["words_resegmented"] / report["words"]
    # A re-segmented word has pieces that are gone: more, shorter ones than before.
    assert report["subtokens_before"] > report["subtokens_changed"] >= report["words_resegmented"]
    assert report["subtokens_changed_share"] == report["subtokens_changed"] / report["subtokens_before"]
    assert report["subtokens_after"] > report["subtokens_before"]
    assert report["unknown_subtokens_after"] == report["unknown_subtokens_before"]  # ...never to unknowns
    assert report["unknown_per_word_after"] == report["unknown_per_word_before"]


def test_an_untrimmed_tokenizer_changes_nothing(random_teacher_dir, heldout):
    tokenizer = load_tokenizer(random_teacher_dir)
    report = segmentation_report(tokenizer, tokenizer, heldout)
    assert report["words"] > 1000 and report["subtokens_before"] == report["subtokens_after"] > report["words"]
    assert report["words_resegmented"] == report["subtokens_changed"] == 0
    assert report["words_resegmented_share"] == report["subtokens_changed_share"] == 0.0


def test_characters_never_seen_still_tokenize(teacher_dir, corpus):
    tokenizer = load_tokenizer(teacher_dir)
    student, trimmed, _ = trim_student(new_student(teacher_dir), tokenizer, corpus)
    strange = [["Ωμέγα", "漢字", "Paris", "☃"], ["\u200b"]]
    report = segmentation_report(tokenizer, trimmed, strange)
    assert report["words"] == 5
    assert report["unknown_words_after"] >= 3  # Greek, CJK, the snowman; the zero-width word becomes unknown
    assert report["unknown_per_word_after"] == pytest.approx(report["unknown_words_after"] / 5)
    scores, _ = emissions(student, trimmed, strange)
    assert scores.shape[:2] == (2, 4) and torch.isfinite(scores).all()


def test_other_tokenizer_models_are_refused(random_teacher_dir, corpus_path, corpus):
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train([str(corpus_path)], trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<unk>"],
                                                          show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>")
    student = new_student(random_teacher_dir)
    with pytest.raises(ValueError, match=r"has a BPE tokenizer model.*student\.vocab: full"):
        trim_student(student, tokenizer, corpus)
    assert student.config.encoder.vocab_size == student.encoder.get_input_embeddings().num_embeddings > 300
