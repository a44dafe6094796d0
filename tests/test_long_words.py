"""Words longer than a window (a 2,000-character base64 blob, a 1,500-character URL, a 440-piece word)
in a 120-line sample corpus, through annotate, a distill step, a finetune step and predict: no window
is left without a word (an empty row would stop the CRF), and the words cut to a window are counted."""
from __future__ import annotations

import base64
import random
import string
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from nerdistill.annotated import AnnotatedDir, load_split
from nerdistill.data import load_training_data, word_pieces
from nerdistill.params import Params
from nerdistill.params_reader import params_from_dict
from nerdistill.stages import annotate, distill, finetune
from nerdistill.streaming import predict_stream
from nerdistill.tagger.load import load_tagger
from nerdistill.text import split_words

LINES = 120
MAX_LENGTH, STRIDE = 64, 16  # 62 sub-tokens a window: each salt below holds longer words
PIECE_WORD = "x" * 439  # 440 pieces with the sample corpus's tokenizer: the word start, then one per "x"


def base64_blob(rng: random.Random) -> str:
    return base64.b64encode(rng.randbytes(1500)).decode()  # 2,000 characters


def long_url(rng: random.Random) -> str:
    head = "https://exemple.fr/telechargement/rapport-annuel.pdf?jeton="
    return head + "".join(rng.choices(string.ascii_letters + string.digits, k=1500 - len(head)))


SALTED = range(5, LINES, 20)


def salted_lines(corpus_path: Path) -> list[str]:
    """The corpus's first 120 lines; lines `SALTED` get in turn a blob, a URL or the 440-piece word,
    each kind once at a line's start, once in its middle or at its end."""
    rng = random.Random(0)
    with corpus_path.open(encoding="utf-8") as corpus:
        lines = [line.rstrip("\n") for line, _ in zip(corpus, range(LINES))]
    salts = (base64_blob, long_url, lambda _: PIECE_WORD)
    for n, i in enumerate(SALTED):
        words = lines[i].split(" ")
        words.insert((0, len(words) // 2, len(words))[(n + n // 3) % 3], salts[n % 3](rng))
        lines[i] = " ".join(words)
    return lines


def words_over(tokenizer, lines: list[str], budget: int) -> int:
    return sum(len(pieces) > budget for line in lines
               for pieces in word_pieces(tokenizer, [word.text for word in split_words(line)]))


def tiny_params(teacher_dir: Path) -> Params:
    return params_from_dict({
        "teacher": {"model_name": str(teacher_dir), "max_length": MAX_LENGTH, "stride": STRIDE, "batch_size": 32},
        "student": {"num_layers": 2, "teacher_layers": [1, 2], "max_length": MAX_LENGTH},
        "train": {"batch_size": 16, "warmup_ratio": 0.0, "layer_map": {"teacher": [2], "student": [2]}},
        "distill": {"epochs": 1, "max_steps": 1, "learning_rate": 1e-3},
        "finetune": {"epochs": 1, "max_steps": 1, "learning_rate": 1e-3},
    })


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, corpus_path: Path) -> Path:
    path = tmp_path_factory.mktemp("salted") / "corpus.txt"
    path.write_text("".join(line + "\n" for line in salted_lines(corpus_path)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def annotated(tmp_path_factory: pytest.TempPathFactory, corpus: Path, random_teacher_dir: Path) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("annotated") / "data"
    return out, annotate.run(tiny_params(random_teacher_dir), corpus, out)


@pytest.fixture(scope="module")
def distilled(tmp_path_factory: pytest.TempPathFactory, annotated: tuple[Path, dict],
              random_teacher_dir: Path) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("distill")
    metrics = distill.run(tiny_params(random_teacher_dir), data_dir=annotated[0], out_dir=root / "student",
                          history_csv=root / "h.csv", components_csv=root / "c.csv", plot_png=root / "h.png",
                          checkpoint_dir=root / "ckpt")
    return root / "student", metrics


def test_salts_hold_words_longer_than_a_window(corpus: Path, tokenizer_dir: Path):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    rng = random.Random(1)
    assert [len(p) for p in word_pieces(tokenizer, [PIECE_WORD])] == [440]
    assert len(base64_blob(rng)) == 2000 and len(long_url(rng)) == 1500
    lines = corpus.read_text(encoding="utf-8").splitlines()
    assert len(lines) == LINES and sum(PIECE_WORD in line for line in lines) == 2
    # Blobs are split at + and / into words, but their long runs are still longer than a window.
    assert [i for i, line in enumerate(lines) if words_over(tokenizer, [line], MAX_LENGTH - 2)] == list(SALTED)


def test_annotate_keeps_every_word_and_counts_the_cut_ones(annotated: tuple[Path, dict], corpus: Path,
                                                           tokenizer_dir: Path):
    out, metrics = annotated
    records = [r for split in annotate.SPLITS for r in load_split(out / f"{split}.jsonl")]
    lines = corpus.read_text(encoding="utf-8").splitlines()
    assert sorted(r["text"] for r in records) == sorted(lines)
    assert all(r["tokens"] == [w.text for w in split_words(r["text"])] for r in records)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert metrics["long_words_cut"] == words_over(tokenizer, lines, MAX_LENGTH - 2)


def test_every_training_window_owns_a_word(annotated: tuple[Path, dict], tokenizer_dir: Path):
    out, _ = annotated
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    data = load_training_data(AnnotatedDir(out), tokenizer, MAX_LENGTH, STRIDE)
    for split, feats in (("train", data.train), ("val", data.val)):
        feats = list(feats)
        assert all(feature["labels"] for feature in feats), f"{split}: a window owns no word"
        labelled = sum(len(feature["labels"]) for feature in feats)
        assert labelled == sum(len(r["tokens"]) for r in load_split(out / f"{split}.jsonl"))
    train_texts = [r["text"] for r in load_split(out / "train.jsonl")]
    assert words_over(tokenizer, train_texts, MAX_LENGTH - 2), "no salted line in the train split"


def test_a_distill_step_then_a_finetune_step_train_on_them(distilled: tuple[Path, dict], annotated: tuple[Path, dict],
                                                           random_teacher_dir: Path, tmp_path: Path):
    student, metrics = distilled
    assert metrics["optimizer_steps"] == 1 and (student / "model.safetensors").is_file()
    metrics = finetune.run(tiny_params(random_teacher_dir), model_dir=student, data_dir=annotated[0],
                           out_dir=tmp_path / "student", history_csv=tmp_path / "h.csv", plot_png=tmp_path / "h.png",
                           checkpoint_dir=tmp_path / "ckpt")
    assert metrics["optimizer_steps"] == 1 and (tmp_path / "student" / "model.safetensors").is_file()


def test_predict_tags_every_line_and_reports_the_cut_words(distilled: tuple[Path, dict], corpus: Path,
                                                            tmp_path: Path):
    tagger = load_tagger(distilled[0], device="cpu")
    assert tagger.window == (MAX_LENGTH, STRIDE)
    counts = predict_stream(tagger, corpus, tmp_path / "out.jsonl", batch_size=16)
    lines = corpus.read_text(encoding="utf-8").splitlines()
    assert counts["lines"] == counts["tagged"] == LINES and counts["failed"] == 0
    assert counts["long_words_cut"] == words_over(tagger.words.tokenizer, lines, MAX_LENGTH - 2) >= len(SALTED)
    assert len((tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()) == LINES
