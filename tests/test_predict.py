"""NerTagger: character offsets, window stitching, long lines, tag_words, model folder errors, and the
streaming `predict` core (one output line per input line, bad lines reported)."""
from __future__ import annotations

import io
import json
import sys
import unicodedata
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from nerdistill.io import InputError
from nerdistill.model_folders import model_kind
from nerdistill.streaming import predict_stream
from nerdistill.tagger.core import NerTagger, WindowOutput
from nerdistill.tagger.load import load_tagger
from nerdistill.text import drop_types, iob1_to_iob2, is_valid_iob2, split_words

ENTITY_KEYS = {"text", "type", "start", "end", "token_start", "token_end", "score"}


@pytest.fixture(scope="module")
def teacher_tagger(demo_teacher_dir: Path) -> NerTagger:
    return load_tagger(demo_teacher_dir, device="cpu")


def assert_entities_index_the_text(text: str, entities: list[dict]) -> None:
    words = split_words(text)
    previous_end = 0
    for entity in entities:
        assert set(entity) == ENTITY_KEYS
        assert text[entity["start"]:entity["end"]] == entity["text"]
        assert words[entity["token_start"]].start == entity["start"]
        assert words[entity["token_end"] - 1].end == entity["end"]
        assert entity["start"] >= previous_end, "entities overlap or are out of order"
        assert 0.0 < entity["score"] <= 1.0
        previous_end = entity["end"]


def test_offsets_round_trip_on_accents_elisions_and_emoji(teacher_tagger):
    texts = [
        "🇫🇷 Hier, 👨\u200d👩\u200d👧 Jean-Pierre Lefèvre est arrivé à l'hôpital de Saint-Étienne 😀 "
        "avec Mme Bénédicte Durand.",
        unicodedata.normalize("NFD", "Le docteur Hélène Lefèvre travaille à Besançon depuis l'été."),
        "L'association d'Amnesty International s'est installée à Orléans… aujourd'hui 🎉",
    ]
    results = teacher_tagger(texts)
    assert len(results) == len(texts)
    for text, entities in zip(texts, results):
        assert_entities_index_the_text(text, entities)
    # Entities after multi-code-point emoji and in decomposed (NFD) text are found at the right place.
    assert any(e["text"] == "Jean-Pierre Lefèvre" and e["type"] == "PER" for e in results[0])
    assert results[1], "nothing found in the decomposed text"


def test_blank_and_invisible_texts_have_no_entities(teacher_tagger):
    assert teacher_tagger(["", "   ", "\u200b"]) == [[], [], []]


# --- window stitching -------------------------------------------------------------------------------

class EdgeBlindBackend:
    """A stand-in model that finds names by their first sub-token and, like a real model short of
    context, says O for the first and last word of every window it sees."""

    kind = "stub"
    labels = ["O", "B-PER", "I-PER"]

    def __init__(self, name_ids: set[int]) -> None:
        self.name_ids = name_ids
        self.rows_per_call: list[int] = []

    def predict(self, batch: dict[str, torch.Tensor]) -> list[WindowOutput]:
        self.rows_per_call.append(batch["input_ids"].size(0))
        out = []
        for ids, index, mask in zip(batch["input_ids"], batch["word_index"], batch["word_mask"]):
            first_ids = ids[index[mask]].tolist()
            is_name = [token in self.name_ids for token in first_ids]
            labels = [("I-PER" if k > 0 and is_name[k - 1] else "B-PER") if name else "O"
                      for k, name in enumerate(is_name)]
            labels[0], labels[-1] = "O", "O"
            out.append(WindowOutput(labels, [1.0] * len(labels), torch.eye(3)[[self.labels.index(l) for l in labels]]))
        return out


def test_entity_across_a_window_edge_comes_out_once_and_whole(demo_teacher_dir):
    tokenizer = AutoTokenizer.from_pretrained(demo_teacher_dir)
    name_ids = {tokenizer(word, add_special_tokens=False)["input_ids"][0] for word in ("Jean", "Dupont")}
    # Names at every offset relative to the window edges: "a b c Jean Dupont d a b Jean Dupont ..."
    filler = ["le", "chat", "de", "la", "maison", "voit"]
    words = []
    for repeat in range(40):
        words += filler[: 1 + repeat % len(filler)] + ["Jean", "Dupont"]
    words += filler
    text = " ".join(words)
    backend = EdgeBlindBackend(name_ids)
    tagger = NerTagger(backend, tokenizer, max_length=24, stride=10, batch_size=4)

    windows = tagger.words.windows([w.text for w in split_words(text)])
    cuts = [window.word_ids[window.owned.index(True)] for window in windows[1:]]
    name_starts = [i for i in range(len(words) - 1) if words[i:i + 2] == ["Jean", "Dupont"]]
    assert len(windows) > 5
    assert set(cuts) & {start + 1 for start in name_starts}, "no name straddles an ownership cut"

    entities = tagger([text])[0]
    assert_entities_index_the_text(text, entities)
    assert [e["text"] for e in entities] == ["Jean Dupont"] * len(name_starts)
    assert [e["token_start"] for e in entities] == name_starts
    assert max(backend.rows_per_call) <= 4
    # The distributions are stitched like the labels: each word's comes from the window owning it.
    (tags,), (probs,) = tagger.tag_words_with_probs([[w.text for w in split_words(text)]])
    assert probs.shape == (len(words), 3) and torch.equal(probs.sum(-1), torch.ones(len(words)))
    assert iob1_to_iob2([backend.labels[i] for i in probs.argmax(-1).tolist()]) == tags


def test_long_line_runs_in_bounded_batches(demo_teacher_dir, corpus_path):
    lines = [line for line in corpus_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    text, count = "", 0
    for line in lines * 10:
        text += line + " "
        count += len(split_words(line))
        if count >= 20_000:
            break
    tagger = load_tagger(demo_teacher_dir, device="cpu", max_length=128, stride=32, batch_size=16)
    calls: list[int] = []
    predict = tagger.backend.predict
    tagger.backend.predict = lambda batch: calls.append(batch["input_ids"].size(0)) or predict(batch)

    entities = tagger([text])[0]

    windows = len(tagger.words.windows([w.text for w in split_words(text)]))
    assert windows > 100
    assert calls == [16] * (windows // 16) + ([windows % 16] if windows % 16 else [])  # a batch at a time
    assert len(entities) > 100
    assert_entities_index_the_text(text, entities)
    assert entities[-1]["token_end"] <= count


# --- tag_words, labels, folders --------------------------------------------------------------------

def test_tag_words_gives_iob2_per_word_and_drops_types_on_request(teacher_tagger, demo_teacher_dir):
    sentences = [["Le", "docteur", "Jean", "Martin", "habite", "à", "Lyon", "."], [],
                 ["Le", "festival", "de", "Cannes", "a", "eu", "lieu", "à", "Cannes", "."]]
    tags = teacher_tagger.tag_words(sentences, batch_size=2)
    assert [len(t) for t in tags] == [8, 0, 10]
    assert all(is_valid_iob2(t) for t in tags)
    assert tags[0][2:4] == ["B-PER", "I-PER"]
    dropped = teacher_tagger.tag_words(sentences, drop_types=["PER", "MISC"])
    assert dropped == [drop_types(t, ["PER", "MISC"]) for t in tags]
    assert all(not tag.endswith(("PER", "MISC")) for t in dropped for tag in t)
    assert any(tag != "O" for t in dropped for tag in t)
    assert "B-MISC" in teacher_tagger.labels  # the teacher reports every type it has by default
    assert load_tagger(demo_teacher_dir, drop_types=["MISC"]).labels == [
        "O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


def test_model_folder_errors_name_what_is_missing(tmp_path, demo_teacher_dir):
    with pytest.raises(InputError, match="no such model folder"):
        model_kind(tmp_path / "absent")
    with pytest.raises(InputError, match="no config.json"):
        model_kind(tmp_path)
    student = tmp_path / "student"
    student.mkdir()
    (student / "config.json").write_text(json.dumps({"model_type": "nerdistill-crf-student"}))
    with pytest.raises(InputError, match=r"missing model\.safetensors, tokenizer_config\.json"):
        load_tagger(student)
    onnx = tmp_path / "onnx"
    onnx.mkdir()
    (onnx / "nerdistill_onnx.json").write_text(json.dumps({"model_file": "model.onnx"}))
    with pytest.raises(InputError, match=r"missing model\.onnx, crf\.json"):
        load_tagger(onnx)
    assert model_kind(demo_teacher_dir) == ("teacher", demo_teacher_dir)
    assert model_kind("Jean-Baptiste/camembert-ner")[0] == "teacher"


def test_window_settings_are_checked_against_the_model(demo_teacher_dir):
    with pytest.raises(InputError, match="takes windows of 8 to 512 sub-tokens"):
        load_tagger(demo_teacher_dir, max_length=600)
    tagger = load_tagger(demo_teacher_dir, max_length=64)
    assert (tagger.max_length, tagger.stride) == (64, 16)


# --- predict_stream ---------------------------------------------------------------------------------

def read_output(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_stream_txt_keeps_line_count_with_empty_and_bad_lines(tmp_path, teacher_tagger):
    source = tmp_path / "in.txt"
    source.write_bytes("Le docteur Jean Martin habite à Lyon.\n\n".encode()
                       + b"caf\xe9 latin-1\n"
                       + "Marie Curie est née à Varsovie.\r\n   \nSans fin de ligne à Paris".encode())
    out = tmp_path / "out.jsonl"
    counts = predict_stream(teacher_tagger, source, out, batch_size=2, chunk_lines=2)
    rows = read_output(out)
    assert len(rows) == 6
    assert counts == {"lines": 6, "tagged": 4, "empty": 1, "failed": 1, "long_words_cut": 0,
                      "entities": counts["entities"]}
    assert rows[1] == {"text": "", "entities": []}
    assert rows[2]["line"] == 3 and "UTF-8" in rows[2]["error"]
    assert rows[3]["text"] == "Marie Curie est née à Varsovie."  # \r\n stripped, text kept as is
    assert rows[4] == {"text": "   ", "entities": []}
    for row in (rows[0], rows[3], rows[5]):
        assert_entities_index_the_text(row["text"], row["entities"])
    assert any(e["text"] == "Jean Martin" for e in rows[0]["entities"])
    assert counts["entities"] == sum(len(row.get("entities", [])) for row in rows) > 0


def test_stream_jsonl_carries_ids_and_reports_malformed_lines(tmp_path, teacher_tagger, caplog):
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join([
        json.dumps({"id": "a-1", "text": "Le docteur Jean Martin habite à Lyon."}),
        "",
        "{not json",
        json.dumps(["a", "list"]),
        json.dumps({"id": 7, "title": "no text"}),
        json.dumps({"text": "Marie Curie est née à Varsovie."}),
    ]) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    counts = predict_stream(teacher_tagger, source, out, chunk_lines=4)
    rows = read_output(out)
    assert len(rows) == 6
    assert rows[0]["id"] == "a-1" and rows[0]["entities"]
    assert rows[1] == {"text": "", "entities": []}
    assert [rows[i]["line"] for i in (2, 3, 4)] == [3, 4, 5]
    assert "malformed JSON" in rows[2]["error"] and "'text'" in rows[3]["error"]
    assert "id" not in rows[5] and rows[5]["entities"]
    assert counts["failed"] == 3 and counts["tagged"] == 2 and counts["empty"] == 1
    assert f"{source}:3: malformed JSON" in caplog.text


def test_stream_stdin_to_stdout(monkeypatch, capsys, teacher_tagger):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("Jean Martin habite à Lyon.\n\n".encode())))
    counts = predict_stream(teacher_tagger, "-", "-")
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert counts["lines"] == 2 and len(rows) == 2 and rows[0]["entities"]


def test_stream_rejects_unknown_suffix_and_missing_input(tmp_path, teacher_tagger):
    with pytest.raises(InputError, match=r"unknown input format '\.csv'"):
        predict_stream(teacher_tagger, tmp_path / "in.csv", tmp_path / "out.jsonl")
    with pytest.raises(InputError, match="input file not found"):
        predict_stream(teacher_tagger, tmp_path / "absent.txt", tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()
