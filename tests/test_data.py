import json
import math
import random
from collections import Counter

import pytest
import torch
from transformers import AutoTokenizer

from nerdistill.annotated import load_split
from nerdistill.data import NerCollator, WordTokenizer, _owned_ranges, _window_spans, features, word_pieces
from nerdistill.io import InputError

LABEL2ID = {"O": 0, "B-LOC": 1, "I-LOC": 2, "B-PER": 3, "I-PER": 4}


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def owners(windows) -> Counter:
    return Counter(word for w in windows for word, mine in zip(w.word_ids, w.owned) if mine)


def test_short_line_is_one_window_with_first_subtoken_positions(tokenizer):
    words = ["Emmanuel", "Macron", "est", "à", "Paris", "."]
    (window,) = WordTokenizer(tokenizer, 64, 8).windows(words)
    assert window.word_ids == list(range(6)) and all(window.owned)
    assert window.starts_line and window.ends_line
    encoding = tokenizer(words, is_split_into_words=True)
    firsts = [encoding.word_ids().index(i) for i in range(6)]
    assert window.input_ids == encoding["input_ids"] and window.word_index == firsts


def test_long_line_windows_cover_every_word_once(tokenizer):
    words = ("Le président Emmanuel Macron a visité l' hôpital de Saint-Étienne jusqu' à midi .".split() * 150)[:2000]
    word_tokenizer = WordTokenizer(tokenizer, 32, 8)
    windows = word_tokenizer.windows(words)
    assert len(windows) > 1
    assert all(len(w.input_ids) <= 32 for w in windows)
    assert owners(windows) == Counter(range(2000))
    # Consecutive windows share context, and owned words sit between the unowned edges.
    assert all(a.word_ids[-1] >= b.word_ids[0] for a, b in zip(windows, windows[1:]))
    for w in windows:
        flags = "".join("1" if mine else "0" for mine in w.owned)
        assert flags.strip("0") == "1" * flags.count("1")
    # Round trip: reading each word's first sub-token back gives the words in order.
    stitched = {word: w.input_ids[index] for w in windows
                for word, index, mine in zip(w.word_ids, w.word_index, w.owned) if mine}
    single = [tokenizer([word], is_split_into_words=True, add_special_tokens=False)["input_ids"][0] for word in words]
    assert [stitched[i] for i in range(2000)] == single


def test_words_without_subtokens_keep_a_position(tokenizer):
    words = ["Paris", "\u200b", "", "Lyon"]
    (window,) = WordTokenizer(tokenizer, 64, 8).windows(words)
    assert len(window.word_index) == 4 and len(set(window.word_index)) == 4
    assert window.input_ids[window.word_index[1]] == tokenizer.unk_token_id


def test_huge_single_word_is_capped_not_dropped(tokenizer):
    words = ["a", "x" * 500, "b"]
    word_tokenizer = WordTokenizer(tokenizer, 16, 2)
    windows = word_tokenizer.windows(words)
    assert owners(windows) == Counter(range(3)) and all(len(w.input_ids) <= 16 for w in windows)
    assert all(any(w.owned) for w in windows)
    assert word_tokenizer.words_cut == 1
    # The count runs over every line; a word of 14 pieces (one per "x" and the word start) fills a window.
    word_tokenizer.windows(["x" * 500, "x" * 13, "x" * 14])
    assert word_tokenizer.words_cut == 3


def test_a_word_that_fills_most_of_a_window_does_not_stall_the_next(tokenizer):
    # 97 one-piece words, one of 440 pieces, 20 more (512-sub-token windows, stride 128): the windows
    # used to creep forward a word at a time behind the long word, 29 of them, 13 owning no word.
    words = ["de"] * 97 + ["x" * 439] + ["la"] * 20
    assert [len(p) for p in word_pieces(tokenizer, ["de", "x" * 439, "la"])] == [1, 440, 1]
    word_tokenizer = WordTokenizer(tokenizer, 512, 128)
    windows = word_tokenizer.windows(words)
    assert [(w.word_ids[0], w.word_ids[-1] + 1) for w in windows] == [(0, 97), (27, 98), (98, 118)]
    assert owners(windows) == Counter(range(118)) and all(any(w.owned) for w in windows)
    assert word_tokenizer.words_cut == 0  # 440 pieces fit in a window of 510


def random_line(rng: random.Random, budget: int) -> list[int]:
    """Sub-token counts of a line's words: mostly short, some up to a window, and words longer than a
    window (cut to it, as `WordTokenizer` does) anywhere, next to each other or not."""
    lengths = [min(budget, rng.choice((1, 1, 1, 2, 3, rng.randint(1, budget)))) for _ in range(rng.randint(1, 300))]
    for _ in range(rng.choice((0, 1, 1, 3, 10))):
        lengths.insert(rng.randint(0, len(lengths)), budget)
    return lengths


def test_windows_advance_and_own_every_word_once_on_random_lines():
    rng = random.Random(0)
    for _ in range(3000):
        budget = rng.choice((2, 5, 14, 62, 510))
        stride = rng.choice((0, 0, 1, budget // 4, budget // 2, budget - 1))
        lengths = random_line(rng, budget)
        spans = _window_spans(lengths, budget, stride)
        owned = _owned_ranges(spans, len(lengths))
        case = f"budget={budget} stride={stride} lengths={lengths}"
        assert all(sum(lengths[start:end]) <= budget for start, end in spans), case
        assert [word for start, end in owned for word in range(start, end)] == list(range(len(lengths))), case
        assert all(start <= first < last <= end for (start, end), (first, last) in zip(spans, owned)), case
        # Linear in sub-tokens. Whole-word windows cannot promise ceil(sub-tokens / (budget - stride)) + 1
        # in general (budget 4, stride 0, words of 2 and 3 pieces: one window per word), but each window
        # leaves unused at most the pieces of the word it stops before, and shares at most `stride`.
        assert (len(spans) - 1) * (budget - stride) <= 2 * sum(lengths) - len(lengths), case


def test_one_piece_words_with_a_long_word_anywhere_take_the_windows_they_need():
    rng = random.Random(1)
    for _ in range(1000):
        budget = rng.choice((5, 14, 62, 510))
        stride = rng.choice((0, 1, budget // 4, budget // 2, budget - 1))
        lengths = [1] * rng.randint(0, 600)
        lengths.insert(rng.randint(0, len(lengths)), rng.randint(1, budget))
        spans = _window_spans(lengths, budget, stride)
        assert len(spans) <= math.ceil(sum(lengths) / (budget - stride)) + 1, (budget, stride, lengths)


def test_stride_must_leave_room(tokenizer):
    with pytest.raises(ValueError, match="stride"):
        WordTokenizer(tokenizer, 10, 8)


def test_features_label_each_word_once_and_collate(tokenizer):
    record = {"tokens": ["Marie", "Curie", "vit", "à", "Paris"] * 40,
              "ner_tags": ["B-PER", "I-PER", "O", "O", "B-LOC"] * 40}
    feats = features([record], WordTokenizer(tokenizer, 24, 6), LABEL2ID)
    assert len(feats) > 1
    labels = [label for f in feats for label in f["labels"]]
    assert labels == [LABEL2ID[t] for t in record["ner_tags"]]
    assert all(len(f["word_index"]) == len(f["labels"]) > 0 for f in feats)
    batch = NerCollator(tokenizer.pad_token_id)(feats[:3])
    width = max(len(f["word_index"]) for f in feats[:3])
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["word_index"].shape == batch["labels"].shape == batch["word_mask"].shape == (3, width)
    assert batch["word_mask"].dtype == torch.bool and batch["word_mask"][:, 0].all()
    assert torch.equal(batch["labels"] == -100, ~batch["word_mask"])
    # Only the first window starts the line and only the last ends it: the CRF's edges are the line's.
    assert [(f["starts_line"], f["ends_line"]) for f in feats] == \
        [(True, False)] + [(False, False)] * (len(feats) - 2) + [(False, True)]
    assert batch["starts_line"].tolist() == [True, False, False] and not batch["ends_line"].any()
    gathered = batch["input_ids"].gather(1, batch["word_index"])[batch["word_mask"]]
    assert gathered.tolist() == [f["input_ids"][i] for f in feats[:3] for i in f["word_index"]]
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()


def test_collator_omits_labels_at_inference():
    batch = NerCollator(1)([{"input_ids": [0, 5, 2], "word_index": [1]},
                            {"input_ids": torch.tensor([0, 5, 6, 7, 2]), "word_index": torch.tensor([1, 2, 3])}])
    assert "labels" not in batch
    assert batch["starts_line"].tolist() == batch["ends_line"].tolist() == [True, True]  # whole lines
    assert batch["input_ids"].tolist() == [[0, 5, 2, 1, 1], [0, 5, 6, 7, 2]]
    assert batch["word_mask"].tolist() == [[True, False, False], [True, True, True]]


def write_split(tmp_path, lines):
    (tmp_path / "label2id.json").write_text(json.dumps(LABEL2ID))
    path = tmp_path / "train.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_load_split_reads_valid_records(tmp_path):
    record = {"id": "1", "text": "Marie Curie", "tokens": ["Marie", "Curie"], "ner_tags": ["B-PER", "I-PER"]}
    assert load_split(write_split(tmp_path, [json.dumps(record), ""])) == [record]


@pytest.mark.parametrize("record, message", [
    ({"tokens": ["a", "b"], "ner_tags": ["O"]}, "2 tokens but 1 ner_tags"),
    ({"tokens": ["a"], "ner_tags": ["B-ORG"]}, "B-ORG"),
    ({"tokens": ["a"], "ner_tags": ["I-PER"]}, "IOB2"),
    ({"tokens": [], "ner_tags": []}, "non-empty"),
    ({"ner_tags": ["O"]}, "'tokens'"),
])
def test_load_split_errors_name_file_and_line(tmp_path, record, message):
    good = json.dumps({"tokens": ["a"], "ner_tags": ["O"]})
    path = write_split(tmp_path, [good, json.dumps(record)])
    with pytest.raises(InputError, match=f"train.jsonl:2: .*{message}"):
        load_split(path)


def test_load_split_empty_or_missing(tmp_path):
    with pytest.raises(InputError, match="no records"):
        load_split(write_split(tmp_path, []))
    with pytest.raises(InputError, match="annotate"):
        load_split(tmp_path / "missing.jsonl")
