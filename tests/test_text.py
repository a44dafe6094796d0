import pytest

from nerdistill.text import (drop_types, entity_spans, io_to_iob2, iob1_to_iob2, is_valid_iob2, parse_tag,
                             split_words)


def words(text: str) -> list[str]:
    found = split_words(text)
    assert all(text[w.start:w.end] == w.text for w in found), "offsets must index the text"
    return [w.text for w in found]


@pytest.mark.parametrize("text, expected", [
    ("l'hôpital", ["l'", "hôpital"]),
    ("L’hôpital", ["L’", "hôpital"]),
    ("jusqu'à Orléans", ["jusqu'", "à", "Orléans"]),
    ("d'Orléans", ["d'", "Orléans"]),
    ("qu'il", ["qu'", "il"]),
    ("lorsqu'elle", ["lorsqu'", "elle"]),
    ("aujourd'hui", ["aujourd'hui"]),
    ("O'Neill", ["O'Neill"]),
    ("d'Aix-en-Provence", ["d'", "Aix-en-Provence"]),
    ("Jean-Pierre à Saint-Étienne", ["Jean-Pierre", "à", "Saint-Étienne"]),
    ("Villeneuve-le-Roi", ["Villeneuve-le-Roi"]),
    ("dit-il", ["dit", "-il"]),
    ("A-t-elle vu ?", ["A", "-t-elle", "vu", "?"]),
    ("Est-ce vrai ?!", ["Est", "-ce", "vrai", "?", "!"]),
    ("3,5 mg à 12h30, 1.000 € (10 %).", ["3,5", "mg", "à", "12h30", ",", "1.000", "€", "(", "10", "%", ")", "."]),
    ("Fin, puis...", ["Fin", ",", "puis", "..."]),
    ("Bravo 👍🏽 👨‍👩‍👧 🇫🇷!", ["Bravo", "👍🏽", "👨‍👩‍👧", "🇫🇷", "!"]),
])
def test_split_words_french(text, expected):
    assert words(text) == expected


def test_split_words_odd_whitespace_and_decomposed_accents():
    text = "Cafe\u0301\u00a0crème\u202f: x\u200by\tz\n"
    assert words(text) == ["Cafe\u0301", "crème", ":", "x", "y", "z"]
    assert words("") == [] and words(" \u200b ") == []


def test_io_to_iob2_starts_each_run_with_b():
    tags = ["O", "I-PER", "I-PER", "I-LOC", "I-LOC", "O", "I-LOC", "I-MISC"]
    assert io_to_iob2(tags) == ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "O", "B-LOC", "B-MISC"]
    assert io_to_iob2(["PER", "PER", "O"]) == ["B-PER", "I-PER", "O"]


def test_iob1_to_iob2_keeps_b_between_same_type_entities():
    assert iob1_to_iob2(["I-PER", "I-PER", "B-PER", "O", "I-ORG"]) == ["B-PER", "I-PER", "B-PER", "O", "B-ORG"]
    iob2 = ["B-PER", "I-PER", "B-PER", "O", "B-LOC", "I-LOC"]
    assert iob1_to_iob2(iob2) == iob2


def test_drop_types_repairs_orphans():
    assert drop_types(["B-MISC", "I-MISC", "O", "B-PER"], ["MISC"]) == ["O", "O", "O", "B-PER"]
    # An I- left after a dropped entity of the same span becomes a valid start.
    assert drop_types(["B-MISC", "I-PER", "I-PER"], {"MISC"}) == ["O", "B-PER", "I-PER"]
    assert is_valid_iob2(drop_types(io_to_iob2(["I-MISC", "I-LOC", "I-MISC"]), ["MISC"]))


@pytest.mark.parametrize("tags, valid", [
    (["O", "B-PER", "I-PER", "B-PER"], True),
    ([], True),
    (["I-PER"], False),
    (["O", "I-PER"], False),
    (["B-LOC", "I-PER"], False),
    (["PER"], False),
    (["S-PER"], False),
])
def test_is_valid_iob2(tags, valid):
    assert is_valid_iob2(tags) is valid


def test_entity_spans():
    tags = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "O"]
    assert entity_spans(tags) == [("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 6)]
    assert entity_spans(["O", "I-ORG", "I-ORG"]) == [("ORG", 1, 3)]
    assert entity_spans(["O"]) == []


def test_parse_tag_rejects_other_schemes_naming_the_tag():
    assert parse_tag("I-PER") == ("I", "PER") and parse_tag("O") == ("O", None)
    with pytest.raises(ValueError, match="'E-PER'"):
        parse_tag("E-PER")
