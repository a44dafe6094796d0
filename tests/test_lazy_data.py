"""The training data read lazily: `data.SplitFeatures` gives exactly the features `data.features` makes
from the whole split, in any order, from a file it reads back by byte offset."""
import json

import pytest
import torch
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

from nerdistill.annotated import AnnotatedDir
from nerdistill.data import NerCollator, SplitFeatures, WordTokenizer, features, load_training_data
from nerdistill.io import InputError

LABEL2ID = {"O": 0, "B-LOC": 1, "I-LOC": 2, "B-PER": 3, "I-PER": 4}
SHORT = {"tokens": ["Marie", "vit", "à", "Lyon", "."], "ner_tags": ["B-PER", "O", "O", "B-LOC", "O"]}
LONG = {"tokens": ["Marie", "Curie", "vit", "à", "Paris"] * 30, "ner_tags": ["B-PER", "I-PER", "O", "O", "B-LOC"] * 30}
ACCENTED = {"tokens": ["Hélène", "est", "à", "Besançon"], "ner_tags": ["B-PER", "O", "O", "B-LOC"]}


@pytest.fixture(scope="module")
def words(tokenizer_dir):
    return WordTokenizer(AutoTokenizer.from_pretrained(tokenizer_dir), 24, 6)


def annotated(tmp_path, records, bom=False, line_end="\n", blank_lines=0):
    """A folder with every split holding `records` (train with a BOM, CRLF ends and blank lines when asked)."""
    (tmp_path / "label2id.json").write_text(json.dumps(LABEL2ID))
    (tmp_path / "transitions.json").write_text("{}")
    lines = [json.dumps(record, ensure_ascii=False) + line_end + line_end * blank_lines for record in records]
    for name in ("train", "val", "test"):
        (tmp_path / f"{name}.jsonl").write_bytes((("\ufeff" if bom else "") + "".join(lines)).encode("utf-8"))
    return AnnotatedDir(tmp_path)


@pytest.mark.parametrize("bom, line_end, blank_lines", [(False, "\n", 0), (True, "\r\n", 2)])
def test_lazy_features_equal_the_eager_ones_in_any_order(tmp_path, words, bom, line_end, blank_lines):
    records = [SHORT, LONG, ACCENTED, LONG, SHORT]
    eager = features(records, words, LABEL2ID)
    lazy = SplitFeatures(annotated(tmp_path, records, bom, line_end, blank_lines), "train", words, LABEL2ID)
    assert len(lazy) == len(eager) > len(records), "the long lines give several windows each"
    backwards = range(len(lazy) - 1, -1, -1)
    assert [lazy[i] for i in backwards] == [eager[i] for i in backwards]
    assert lazy[:3] == eager[:3] and lazy[-1] == eager[-1] and list(lazy) == eager
    assert lazy.lengths.tolist() == [len(feature["input_ids"]) for feature in eager]
    with pytest.raises(IndexError):
        lazy[len(lazy)]


def test_an_epoch_of_shuffled_batches_holds_every_window_once(tmp_path, words):
    records = [SHORT, LONG, ACCENTED] * 4
    lazy = SplitFeatures(annotated(tmp_path, records), "train", words, LABEL2ID)
    collator = NerCollator(words.tokenizer.pad_token_id)
    batches = DataLoader(lazy, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0),
                         collate_fn=collator)
    labels = sorted(label for batch in batches for row in batch["labels"].tolist() for label in row if label >= 0)
    assert labels == sorted(label for feature in features(records, words, LABEL2ID) for label in feature["labels"])


def test_a_bad_record_is_named_before_training(tmp_path, words):
    folder = annotated(tmp_path, [SHORT, {"tokens": ["Paris"], "ner_tags": ["I-LOC", "O"]}])
    with pytest.raises(InputError, match=r"train.jsonl:2: 1 tokens but 2 ner_tags"):
        SplitFeatures(folder, "train", words, LABEL2ID)


def test_training_data_of_an_annotated_folder(tmp_path, words):
    folder = annotated(tmp_path, [SHORT, LONG])
    (tmp_path / "val.jsonl").write_text("")
    with pytest.raises(InputError, match=r"val.jsonl: no records"):
        load_training_data(folder, words.tokenizer, 24, 6)
    (tmp_path / "val.jsonl").write_text(json.dumps(SHORT) + "\n")
    data = load_training_data(folder, words.tokenizer, 24, 6)
    assert (len(data.train), len(data.val)) == (len(features([SHORT, LONG], words, LABEL2ID)), 1)
    assert data.id2label == {i: label for label, i in LABEL2ID.items()}
