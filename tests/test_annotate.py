import hashlib
import json
import shutil
from pathlib import Path

import pytest

from nerdistill.annotated import load_split
from nerdistill.io import InputError
from nerdistill.params_reader import params_from_dict
from nerdistill.stages import annotate
from nerdistill.text import is_valid_iob2, split_words

PHRASES = [
    "Emmanuel Macron a visité l'hôpital de Saint-Étienne.",
    "Marie Curie travaillait à l'Institut Pasteur, à Paris.",
    "Le TGV part de Lyon à 12h30 pour Marseille.",
    "Jean-Pierre habite à Bordeaux depuis 2019.",
    "La SNCF annonce des retards jusqu'à Orléans.",
    "Le docteur Martin exerce au CHU de Nantes.",
]


def params(teacher_dir, batch_size=32, **annotate_params):
    return params_from_dict({"base": {"seed": annotate_params.pop("seed", 42)},
                             "teacher": {"model_name": str(teacher_dir), "max_length": 16, "stride": 4,
                                         "batch_size": batch_size},
                             "annotate": annotate_params})


def write_corpus(tmp_path, lines, name="corpus.txt"):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def read_records(out_dir: Path) -> dict[str, list[dict]]:
    return {name: load_split(out_dir / f"{name}.jsonl") for name in annotate.SPLITS}


def test_annotated_dir_holds_the_data_contract(annotated_dir):
    label2id = json.loads((annotated_dir / "label2id.json").read_text())
    assert label2id == {"O": 0, "B-LOC": 1, "I-LOC": 2, "B-ORG": 3, "I-ORG": 4, "B-PER": 5, "I-PER": 6}
    splits = read_records(annotated_dir)
    ids = [record["id"] for records in splits.values() for record in records]
    assert len(ids) == len(set(ids)) and min(map(len, splits.values())) > 0
    tags = [tag for records in splits.values() for record in records for tag in record["ner_tags"]]
    assert {"B-PER", "B-LOC", "B-ORG"} <= set(tags), "the demo teacher finds real entities"
    for record in (r for records in splits.values() for r in records):
        assert is_valid_iob2(record["ner_tags"])
        assert [record["text"][a:b] for a, b in record["offsets"]] == record["tokens"]
    transitions = json.loads((annotated_dir / "transitions.json").read_text())
    assert transitions["labels"] == list(label2id)
    assert transitions["transitions"][label2id["O"]][label2id["I-PER"]] == -10.0


def test_long_lines_are_windowed_without_losing_words(tmp_path, random_teacher_dir):
    long_line = " ".join(PHRASES * 8)
    corpus = write_corpus(tmp_path, [*PHRASES, long_line])
    metrics = annotate.run(params(random_teacher_dir), corpus, tmp_path / "out")
    records = [r for rs in read_records(tmp_path / "out").values() for r in rs]
    assert metrics["windowed_lines"] >= 1
    by_text = {r["text"]: r for r in records}
    assert len(by_text[long_line]["tokens"]) == len(split_words(long_line))
    assert metrics["tokens"] == sum(len(split_words(line)) for line in [*PHRASES, long_line])
    assert all(is_valid_iob2(r["ner_tags"]) for r in records)
    assert metrics["phrases"] == {"total": 7, "train": 5, "val": 1, "test": 1}


def test_split_is_deterministic_and_seeded(tmp_path, random_teacher_dir):
    corpus = write_corpus(tmp_path, [f"{phrase} ({i})" for i in range(5) for phrase in PHRASES])
    annotate.run(params(random_teacher_dir), corpus, tmp_path / "a")
    annotate.run(params(random_teacher_dir), corpus, tmp_path / "b")
    annotate.run(params(random_teacher_dir, seed=7), corpus, tmp_path / "c")
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "transitions.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    train_ids = {name: [r["id"] for r in read_records(tmp_path / name)["train"]] for name in "ac"}
    assert train_ids["a"] != train_ids["c"]
    splits = read_records(tmp_path / "a")
    assert sorted(int(r["id"]) for rs in splits.values() for r in rs) == list(range(1, 31))


def test_iob2_teacher_labels_work(tmp_path, random_teacher_dir):
    teacher = tmp_path / "iob2_teacher"
    shutil.copytree(random_teacher_dir, teacher)
    config = json.loads((teacher / "config.json").read_text())
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    config["id2label"] = {str(i): label for i, label in enumerate(labels)}
    config["label2id"] = {label: i for i, label in enumerate(labels)}
    (teacher / "config.json").write_text(json.dumps(config))
    annotate.run(params(teacher), write_corpus(tmp_path, PHRASES), tmp_path / "out")
    assert json.loads((tmp_path / "out" / "label2id.json").read_text()) == {
        "O": 0, "B-LOC": 1, "I-LOC": 2, "B-PER": 3, "I-PER": 4}
    assert all(is_valid_iob2(r["ner_tags"]) for rs in read_records(tmp_path / "out").values() for r in rs)


def test_jsonl_corpus_keeps_ids_and_counts_skipped_lines(tmp_path, random_teacher_dir):
    rows = [json.dumps({"id": f"doc-{i}", "text": text}) for i, text in enumerate(PHRASES)]
    rows += [json.dumps({"text": "  "}), json.dumps({"id": "zw", "text": "\u200b"}), json.dumps({"text": "x" * 500})]
    corpus = write_corpus(tmp_path, rows, "corpus.jsonl")
    metrics = annotate.run(params(random_teacher_dir, max_line_chars=200, max_skipped_fraction=0.2), corpus,
                           tmp_path / "out")
    ids = {r["id"] for rs in read_records(tmp_path / "out").values() for r in rs}
    assert ids == {f"doc-{i}" for i in range(len(PHRASES))}
    assert metrics["skipped"] == {"blank_lines": 1, "duplicates": 0, "no_words": 1, "too_long": 1, "too_long_fraction": 1 / 8}


@pytest.mark.parametrize("content, name, message", [
    (b"Bonjour Paris.\nCaf\xe9 de Lyon.\n", "corpus.txt", r"corpus.txt:2: not valid UTF-8.*iconv"),
    (b'{"text": "Paris"}\n{"text": "Lyon"\n', "corpus.jsonl", r"corpus.jsonl:2: malformed JSON"),
    (b'{"text": "Paris"}\n{"id": 3}\n', "corpus.jsonl", r"corpus.jsonl:2: .*'text'"),
    (b'{"id": 1, "text": "Paris"}\n{"id": 1, "text": "Lyon"}\n', "corpus.jsonl", r"corpus.jsonl:2: id '1'"),
    (b"", "corpus.txt", "no phrase to annotate"),
    (b"\n   \n\t\n", "corpus.txt", "no phrase to annotate"),
    (b"Paris.\nLyon.\n", "corpus.txt", "at least one"),
    (b"Paris.\n", "corpus.csv", "unsupported corpus format"),
])
def test_bad_corpora_raise_with_file_and_line(tmp_path, random_teacher_dir, content, name, message):
    corpus = tmp_path / name
    corpus.write_bytes(content)
    with pytest.raises(InputError, match=message):
        annotate.run(params(random_teacher_dir), corpus, tmp_path / "out")
    assert not (tmp_path / "out" / "train.jsonl").exists()


def test_too_many_long_lines_stop_the_stage(tmp_path, random_teacher_dir):
    corpus = write_corpus(tmp_path, [*PHRASES, "x" * 300])
    with pytest.raises(InputError, match=r"1 lines .* annotate.max_line_chars=100 \(lines 7\)"):
        annotate.run(params(random_teacher_dir, max_line_chars=100, max_skipped_fraction=0.1), corpus,
                     tmp_path / "out")


@pytest.mark.parametrize("model_name", ["nobody/no-such-ner-model", "/no/such/teacher/folder"])
def test_unreachable_teacher_says_to_use_a_local_folder(tmp_path, model_name):
    corpus = write_corpus(tmp_path, PHRASES)
    with pytest.raises(InputError, match="teacher.model_name.*folder"):
        annotate.run(params(model_name), corpus, tmp_path / "out")


def test_repeated_lines_are_dropped_before_the_split_and_counted(tmp_path, demo_teacher_dir):
    boilerplate = "Compte rendu validé par le service de cardiologie."
    lines = [f"Marie Durand habite à Lyon depuis {n} ans." for n in range(30)]
    corpus = write_corpus(tmp_path, lines + [boilerplate] * 12 + lines[:5])
    metrics = annotate.run(params(str(demo_teacher_dir)), corpus, tmp_path / "out")
    assert metrics["skipped"]["duplicates"] == 11 + 5
    assert metrics["phrases"]["total"] == 31
    texts = [r["text"] for split in ("train", "val", "test") for r in load_split(tmp_path / "out" / f"{split}.jsonl")]
    assert sorted(texts) == sorted(set(lines) | {boilerplate})


def test_chunks_tagged_one_by_one_write_what_one_chunk_writes(tmp_path, random_teacher_dir):
    # A 1,280-character hex blob is one word of hundreds of sub-tokens: cut to the window, and counted.
    blob = hashlib.sha256(b"blob").hexdigest() * 20
    lines = [f"{phrase} ({i})" for i in range(12) for phrase in PHRASES] + [f"Le code {blob} est refusé."]
    corpus = write_corpus(tmp_path, lines)
    whole = annotate.run(params(random_teacher_dir), corpus, tmp_path / "whole")  # one chunk of 1,024 lines
    chunked = annotate.run(params(random_teacher_dir, batch_size=1), corpus, tmp_path / "chunked")  # 3 of 32
    assert chunked == whole
    assert whole["phrases"]["total"] == len(lines) and whole["long_words_cut"] == 1
    for name in ("train.jsonl", "val.jsonl", "test.jsonl"):
        assert (tmp_path / "chunked" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    texts = [record["text"] for records in read_records(tmp_path / "whole").values() for record in records]
    assert sorted(texts) == sorted(lines)
