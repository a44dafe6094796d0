import json
from collections import Counter

import pytest
import torch
from transformers import AutoTokenizer

from nerdistill.annotated import load_split
from nerdistill.data import NerCollator, WordTokenizer, features
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
    windows = WordTokenizer(tokenizer, 16, 2).windows(words)
    assert owners(windows) == Counter(range(3)) and all(len(w.input_ids) <= 16 for w in windows)


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
