"""French word splitting with character offsets, and IOB tag conversions.

Words are the unit everything is labelled in: the teacher's sub-token predictions are read at
each word's first sub-token, the student's CRF runs over words, and entities map back to the
text through the offsets kept here.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Letters and digits, plus combining accents so that decomposed text (NFD "e\u0301") stays whole.
_ALNUM = r"(?:[^\W_]|[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f])"
_HYPHEN_OR_APOSTROPHE = r"[-\u2010\u2011'\u2019]"
# Emoji modifiers that belong to the symbol before them: variation selectors, skin tones,
# keycaps, and zero-width-joiner sequences such as family emoji.
_SYMBOL = r"(?:[\U0001F1E6-\U0001F1FF]{2}|[^\w\s])(?:[\ufe0e\ufe0f\U0001F3FB-\U0001F3FF\u20e3]|\u200d[^\w\s])*"
_WORD_RE = re.compile(
    rf"""
    {_ALNUM}+
    (?:
        {_HYPHEN_OR_APOSTROPHE}{_ALNUM}+      # Jean-Pierre, l'hôpital (elisions are split later)
      | (?<=\d)[.,:](?=\d){_ALNUM}+           # 3,5  1.000  12:30
    )*
    | \.{{2,}}                                # an ellipsis written as dots is one word
    | {_SYMBOL}
    """,
    re.VERBOSE,
)
# Elided articles, pronouns and conjunctions: "l'", "d'", "qu'", "jusqu'"... The list is closed
# so that "aujourd'hui" or "O'Neill" stay one word.
_ELISION_RE = re.compile(r"(?i:jusqu|lorsqu|puisqu|quoiqu|presqu|quelqu|qu|[cdjlmnst]|ç)['\u2019]")
# Inverted subject pronouns ("dit-il", "a-t-elle", "est-ce"), lowercase only, so that place
# names such as "Villeneuve-le-Roi" or "Saint-Jean" are never cut.
_CLITIC_RE = re.compile(r"(?:-t)?-(?:je|tu|il|elle|on|nous|vous|ils|elles|ce)$")
# Invisible characters that the tokenizer would turn into nothing: never words on their own.
_INVISIBLE_CATEGORIES = {"Cc", "Cf"}


@dataclass(frozen=True)
class Word:
    text: str
    start: int
    end: int


def split_words(text: str) -> list[Word]:
    """Split French text into words, keeping `text[w.start:w.end] == w.text`.

    Elisions split after the apostrophe (`l'`, `hôpital`), hyphenated names stay whole
    (`Saint-Étienne`), inverted pronouns split off (`dit`, `-il`; `a`, `-t-il`), punctuation is
    one word per mark, numbers such as `3,5` or `12h30` stay whole.
    """
    words: list[Word] = []
    for match in _WORD_RE.finditer(text):
        if all(unicodedata.category(char) in _INVISIBLE_CATEGORIES for char in match.group()):
            continue
        words.extend(_split_word(match.group(), match.start()))
    return words


def _split_word(token: str, start: int) -> list[Word]:
    parts: list[Word] = []
    while (elision := _ELISION_RE.match(token)) and elision.end() < len(token):
        parts.append(Word(elision.group(), start, start + elision.end()))
        token, start = token[elision.end():], start + elision.end()
    clitics: list[Word] = []
    while (clitic := _CLITIC_RE.search(token)) and clitic.start() > 0:
        clitics.insert(0, Word(clitic.group(), start + clitic.start(), start + len(token)))
        token = token[:clitic.start()]
    return [*parts, Word(token, start, start + len(token)), *clitics]


# --- tags -------------------------------------------------------------------------------------

_PREFIXED_RE = re.compile(r"^([A-Z])-(.+)$")


def parse_tag(tag: str) -> tuple[str, str | None]:
    """`"B-PER"` -> `("B", "PER")`, `"I-PER"` -> `("I", "PER")`, `"O"` -> `("O", None)`.

    A plain type (`"PER"`, as some IO models emit) reads as `("I", "PER")`. Other schemes
    (BIOES `S-PER`, `E-PER`...) raise, naming the tag.
    """
    if tag == "O":
        return "O", None
    prefixed = _PREFIXED_RE.match(tag)
    if prefixed:
        prefix, entity_type = prefixed.groups()
        if prefix not in ("B", "I"):
            raise ValueError(f"unsupported tag {tag!r}: expected O, B-X, I-X or a plain type X "
                             "(IO, IOB1 or IOB2; BIOES/BILOU are not supported)")
        return prefix, entity_type
    if not tag or tag != tag.strip():
        raise ValueError(f"unsupported tag {tag!r}: expected O, B-X, I-X or a plain type X")
    return "I", tag


def iob1_to_iob2(tags: list[str]) -> list[str]:
    """IOB1 (B- only between two adjacent entities of one type) -> IOB2 (B- opens every entity).

    An `I-X` (or plain `X`) opens an entity unless the previous word is in an entity of type X;
    `B-X` always opens one. Valid IOB2 input comes back unchanged.
    """
    out: list[str] = []
    previous_type: str | None = None
    for tag in tags:
        prefix, entity_type = parse_tag(tag)
        if entity_type is None:
            out.append("O")
        elif prefix == "B" or entity_type != previous_type:
            out.append(f"B-{entity_type}")
        else:
            out.append(f"I-{entity_type}")
        previous_type = entity_type
    return out


def io_to_iob2(tags: list[str]) -> list[str]:
    """IO tags (`O, I-LOC, I-PER...`, what camembert-ner emits) -> IOB2.

    IO is IOB1 without any B-, so a run of I-X after anything but X starts with B-X. Two
    adjacent entities of one type cannot be told apart in IO; they become one entity.
    """
    return iob1_to_iob2(tags)


def drop_types(tags: list[str], types: set[str] | list[str] | tuple[str, ...]) -> list[str]:
    """Map the entities of `types` to O and return valid IOB2 (an I- left orphaned becomes B-)."""
    dropped = set(types)
    kept = ["O" if parse_tag(tag)[1] in dropped else tag for tag in tags]
    return iob1_to_iob2(kept)


def is_valid_iob2(tags: list[str]) -> bool:
    """True when every tag is O, B-X or I-X and every I-X follows B-X or I-X."""
    previous_type: str | None = None
    for tag in tags:
        if tag != "O" and not _PREFIXED_RE.match(tag):
            return False
        try:
            prefix, entity_type = parse_tag(tag)
        except ValueError:
            return False
        if prefix == "I" and entity_type != previous_type:
            return False
        previous_type = entity_type
    return True


def entity_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """IOB2 tags -> `(type, start_word, end_word_exclusive)` for each entity, in order.

    An orphan `I-X` (invalid IOB2, e.g. an unconstrained decoder's output) opens an entity, the
    same reading `iob1_to_iob2` gives it.
    """
    spans: list[tuple[str, int, int]] = []
    for index, tag in enumerate(iob1_to_iob2(tags)):
        prefix, entity_type = parse_tag(tag)
        if prefix == "B":
            spans.append((entity_type, index, index + 1))
        elif prefix == "I":
            kind, start, _ = spans[-1]
            spans[-1] = (kind, start, index + 1)
    return spans
