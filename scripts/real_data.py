"""Turn a WikiNEuRal-style CoNLL file into a raw corpus for `annotate` and a gold test file for `evaluate`.

    python scripts/real_data.py ../shared/data/wikineural-fr-val.conllu data/real \
        --max-sentences 10000 --corpus-sentences 4000

The file is cut at `--max-sentences`: sentences before the cut become the raw corpus
(`OUT_DIR/corpus.txt`, one sentence a line; `--corpus-sentences` keeps only the first N of them),
sentences from the cut on become the gold test set (`OUT_DIR/gold_test.conll`, `word<TAB>tag`,
IOB2, read by `nerdistill.metrics.read_conll`). The real stand-in teacher
(shared/tools/make_real_teacher.py) trains on the first 10,000 sentences, so with the default cut
the gold sentences are ones it never saw.

Corpus lines are the tokens joined by spaces, except that an elided word (`l'`, `qu'`) is glued to
the next one as French text writes it, so that `nerdistill.text.split_words` gives the file's
tokens back; `OUT_DIR/split.json` counts the sentences where it still does not. The gold file keeps
the file's tokens as they are: evaluate tags those words directly, without re-splitting them.

A missing CoNLL file is not an error (the data is not shipped with the project): the script logs
why and exits 0 without writing anything.
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from nerdistill.io import write_json, write_text
from nerdistill.metrics import Sentence, read_conll
from nerdistill.text import split_words

logger = logging.getLogger(__name__)

# A word that ends in an apostrophe after a letter is an elision (`l'`, `jusqu'`); a lone `'` is a quote.
_ELIDED = re.compile(r"[^\W\d_]['\u2019]$")


def join_words(words: list[str]) -> str:
    """The sentence as text: words separated by a space, elided words glued to the next word."""
    text = ""
    for index, word in enumerate(words):
        if index and not _ELIDED.search(words[index - 1]):
            text += " "
        text += word
    return text


def resplit_mismatches(sentences: list[Sentence]) -> int:
    """How many sentences `split_words` splits into other words than the CoNLL file's."""
    return sum([w.text for w in split_words(join_words(words))] != words for words, _ in sentences)


def gold_text(sentences: list[Sentence]) -> str:
    """CoNLL text: `word<TAB>tag` per word, a blank line after each sentence."""
    blocks = ["".join(f"{word}\t{tag}\n" for word, tag in zip(words, tags)) for words, tags in sentences]
    return "\n".join(blocks)


def build(conll: Path, out_dir: Path, max_sentences: int, corpus_sentences: int | None = None,
          gold_sentences: int | None = None) -> dict:
    """Write corpus.txt, gold_test.conll and split.json under `out_dir`; return split.json's content."""
    sentences = read_conll(conll)
    if max_sentences >= len(sentences):
        raise ValueError(f"--max-sentences {max_sentences} leaves no gold sentence: {conll} has "
                         f"{len(sentences)}; choose a smaller cut")
    seen, unseen = sentences[:max_sentences], sentences[max_sentences:]
    corpus = seen[:corpus_sentences]
    gold = unseen[:gold_sentences]
    write_text(out_dir / "corpus.txt", "".join(join_words(words) + "\n" for words, _ in corpus))
    write_text(out_dir / "gold_test.conll", gold_text(gold))
    summary = {
        "source": str(conll), "source_sentences": len(sentences), "cut": max_sentences,
        "corpus_sentences": len(corpus), "corpus_words": sum(len(words) for words, _ in corpus),
        "corpus_resplit_mismatches": resplit_mismatches(corpus),
        "gold_first_sentence": max_sentences, "gold_sentences": len(gold),
        "gold_words": sum(len(words) for words, _ in gold),
        "gold_entities": sum(tag.startswith("B-") for _, tags in gold for tag in tags),
    }
    write_json(out_dir / "split.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("conll", type=Path, help="CoNLL file: `index<TAB>word<TAB>tag` or `word<TAB>tag` lines")
    parser.add_argument("out_dir", type=Path, help="folder for corpus.txt, gold_test.conll and split.json")
    parser.add_argument("--max-sentences", type=int, default=10000,
                        help="cut: sentences before it feed the corpus, from it on the gold file (default 10000, "
                             "the teacher's training cut)")
    parser.add_argument("--corpus-sentences", type=int, default=None,
                        help="keep only the first N sentences before the cut in the corpus (default: all)")
    parser.add_argument("--gold-sentences", type=int, default=None,
                        help="keep only the first N sentences after the cut in the gold file (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.conll.is_file():
        logger.warning("%s not found: nothing written (the real data is not shipped with the project; "
                       "see shared/data/README.md)", args.conll)
        return 0
    for flag, value in (("--max-sentences", args.max_sentences), ("--corpus-sentences", args.corpus_sentences),
                        ("--gold-sentences", args.gold_sentences)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be at least 1, got {value}")
    summary = build(args.conll, args.out_dir, args.max_sentences, args.corpus_sentences, args.gold_sentences)
    logger.info("corpus: %d sentences (%d re-split differently by split_words); gold: %d sentences, %d entities",
                summary["corpus_sentences"], summary["corpus_resplit_mismatches"], summary["gold_sentences"],
                summary["gold_entities"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
