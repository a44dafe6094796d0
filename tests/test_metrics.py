"""seqeval strict scores, the type confusion matrix and the CoNLL gold reader."""
from __future__ import annotations

from pathlib import Path

import pytest
from seqeval.metrics import classification_report
from seqeval.scheme import IOB2

from nerdistill.io import InputError
from nerdistill.metrics import entity_scores, read_conll, restrict_types, type_confusion

GOLD = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "O"]]


def test_perfect_prediction_scores_one() -> None:
    scores = entity_scores(GOLD, GOLD)
    assert (scores["precision"], scores["recall"], scores["f1"]) == (1.0, 1.0, 1.0)
    assert (scores["support"], scores["predicted"], scores["sentences"]) == (3, 3, 2)
    assert set(scores["per_type"]) == {"LOC", "ORG", "PER"}


def test_strict_differs_from_lenient_on_an_orphan_inside_tag() -> None:
    # An entity opened by I- is valid for conlleval (lenient) but not in strict IOB2.
    gold = [["B-PER", "I-PER", "O"]]
    pred = [["I-PER", "I-PER", "O"]]
    lenient = classification_report(gold, pred, output_dict=True)["micro avg"]["f1-score"]
    assert lenient == 1.0
    scores = entity_scores(gold, pred)
    assert scores["f1"] == 0.0
    assert scores["per_type"]["PER"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_matches_seqeval_strict_report() -> None:
    pred = [["B-PER", "O", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "B-PER"]]
    report = classification_report(GOLD, pred, mode="strict", scheme=IOB2, output_dict=True)
    scores = entity_scores(GOLD, pred)
    assert scores["f1"] == pytest.approx(report["micro avg"]["f1-score"])
    assert scores["precision"] == pytest.approx(0.5)  # 2 of 4 predicted entities are exact
    assert scores["recall"] == pytest.approx(2 / 3)
    for entity_type in ("LOC", "ORG", "PER"):
        assert scores["per_type"][entity_type]["f1"] == pytest.approx(report[entity_type]["f1-score"])
        assert scores["per_type"][entity_type]["support"] == report[entity_type]["support"]


def test_no_entities_anywhere_gives_zero_not_nan() -> None:
    scores = entity_scores([["O", "O"]], [["O", "O"]])
    assert (scores["f1"], scores["support"], scores["per_type"]) == (0.0, 0, {})


def test_length_mismatch_names_the_sentence() -> None:
    with pytest.raises(ValueError, match="sentence 1: 4 reference tags but 3"):
        entity_scores(GOLD, [GOLD[0], ["O", "O", "O"]])
    with pytest.raises(ValueError, match="2 reference sentences but 1"):
        entity_scores(GOLD, GOLD[:1])


def test_type_confusion_counts_words() -> None:
    pred = [["B-ORG", "I-ORG", "O", "O"], ["O", "B-ORG", "I-ORG", "B-PER"]]
    types, matrix = type_confusion(GOLD, pred)
    assert types == ["LOC", "ORG", "PER", "O"]
    cell = {(types[i], types[j]): n for i, row in enumerate(matrix) for j, n in enumerate(row)}
    assert cell[("PER", "ORG")] == 2
    assert cell[("LOC", "O")] == 1
    assert cell[("ORG", "ORG")] == 2
    assert cell[("O", "PER")] == 1
    assert cell[("O", "O")] == 2
    assert sum(map(sum, matrix)) == 8


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gold.conll"
    path.write_text(text, encoding="utf-8")
    return path


EXPECTED = [(["Jean", "Dupont", "habite", "Paris"], ["B-PER", "I-PER", "O", "B-LOC"]),
            (["Le", "CNRS", "recrute"], ["O", "B-ORG", "O"])]


@pytest.mark.parametrize("text", [
    # IOB2, space-separated, with a document marker
    "-DOCSTART- O\n\nJean B-PER\nDupont I-PER\nhabite O\nParis B-LOC\n\nLe O\nCNRS B-ORG\nrecrute O\n",
    # IOB1 (I- opens entities), tab-separated, several blank lines and a trailing one missing
    "Jean\tI-PER\nDupont\tI-PER\nhabite\tO\nParis\tI-LOC\n\n\n\nLe\tO\nCNRS\tI-ORG\nrecrute\tO",
    # WikiNEuRal: index<TAB>word<TAB>tag, IOB2
    "0\tJean\tB-PER\n1\tDupont\tI-PER\n2\thabite\tO\n3\tParis\tB-LOC\n\n0\tLe\tO\n1\tCNRS\tB-ORG\n2\trecrute\tO\n",
    # index column, space-separated, IOB1
    "1 Jean I-PER\n2 Dupont I-PER\n3 habite O\n4 Paris I-LOC\n\n1 Le O\n2 CNRS I-ORG\n3 recrute O\n",
    # CoNLL-2003 style: word POS chunk tag, CRLF line ends
    "Jean NNP B-NP B-PER\r\nDupont NNP I-NP I-PER\r\nhabite VB B-VP O\r\nParis NNP B-NP B-LOC\r\n\r\n"
    "Le DT B-NP O\r\nCNRS NNP I-NP B-ORG\r\nrecrute VB B-VP O\r\n",
])
def test_read_conll_formats(tmp_path: Path, text: str) -> None:
    assert read_conll(_write(tmp_path, text)) == EXPECTED


def test_read_conll_drops_a_byte_order_mark_and_reads_crlf(tmp_path: Path) -> None:
    # Windows editors save "UTF-8 with BOM": the mark must not stick to the first word.
    path = tmp_path / "gold.conll"
    path.write_bytes("\ufeffJean B-PER\r\nDupont I-PER\r\nhabite O\r\nParis B-LOC\r\n\r\n"
                     "Le O\r\nCNRS B-ORG\r\nrecrute O\r\n".encode("utf-8"))
    sentences = read_conll(path)
    assert sentences[0][0][0] == "Jean"
    assert sentences == EXPECTED


def test_iob1_keeps_adjacent_entities_apart(tmp_path: Path) -> None:
    path = _write(tmp_path, "Paris I-LOC\nLyon B-LOC\nMarseille I-LOC\n")
    assert read_conll(path) == [(["Paris", "Lyon", "Marseille"], ["B-LOC", "B-LOC", "I-LOC"])]


def test_numeric_words_without_index_column(tmp_path: Path) -> None:
    # Three columns but the first is not an index on every line: it is the word.
    path = _write(tmp_path, "1990 CD O\nParis NNP B-LOC\n")
    assert read_conll(path) == [(["1990", "Paris"], ["O", "B-LOC"])]


@pytest.mark.parametrize(("text", "message"), [
    ("Jean B-PER\nDupont\n", r"gold\.conll:2: expected at least two columns"),
    ("Jean B-PER\nDupont NNP I-PER\n", r"gold\.conll:2: 3 columns where earlier lines have 2"),
    ("Jean B-PER\nDupont S-PER\n", r"gold\.conll:2: last column 'S-PER' is not a tag"),
    ("\n\n-DOCSTART- O\n\n", r"no sentences found"),
])
def test_read_conll_errors_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        read_conll(_write(tmp_path, text))


def test_read_conll_rejects_bad_bytes(tmp_path: Path) -> None:
    path = tmp_path / "gold.conll"
    path.write_bytes(b"Jean B-PER\n\xff\xfe O\n")
    with pytest.raises(InputError, match=r"gold\.conll:2: not valid UTF-8"):
        read_conll(path)


def test_restrict_types_maps_other_types_to_o_and_stays_iob2() -> None:
    tags = ["B-MISC", "I-MISC", "B-PER", "I-PER", "O", "B-LOC"]
    assert restrict_types(tags, {"PER", "LOC"}) == ["O", "O", "B-PER", "I-PER", "O", "B-LOC"]
    assert restrict_types(tags, {"PER", "LOC", "MISC"}) == tags
