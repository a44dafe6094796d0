"""Vocabulary trimming: the student keeps only the sub-tokens its corpus uses.

A CamemBERT-base student spends 24.6M of its 110M parameters on one embedding row per sub-token,
most of which a French NER corpus never produces. Trimming keeps

- every piece the corpus's words are cut into, through `data.word_pieces`, the path every model
  input takes;
- every special and added token, and the leading id block up to the last of pad/unk/cls/sep/bos/eos,
  so those ids (and the encoder config's pad/bos/eos ids, on which RoBERTa position ids depend)
  stay what they were (the mask token, last in CamemBERT and XLM-R, keeps its row at a new id: no
  config names it and no NER input holds it);
- every single-character piece (`c` and `▁c` for Unigram, `c` and `##c` for WordPiece), so that
  text written in characters the full vocabulary has pieces for gains no unknown token;
- for Unigram, the lowest-scoring piece: the unknown token's penalty is derived from it.

Kept pieces keep their original order, so ids are only compacted. The corpus segmentation cannot
change: a Unigram tokenizer's Viterbi over a subset holding the best path still finds that path,
and WordPiece's greedy longest match only ever picks pieces that stay. Both are checked anyway on
every corpus sentence. Words outside the corpus can be cut into other, smaller pieces:
`segmentation_report` measures how many (the export stage, on the test split trimming never sees).
Other model types (BPE) are refused: merges would have to be trimmed too.
"""
from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from nerdistill.data import word_pieces
from nerdistill.modeling import CrfStudent, parameter_count

log = logging.getLogger(__name__)

SUPPORTED_MODELS = ("Unigram", "WordPiece")
METASPACE = "\u2581"  # SentencePiece's word-start mark
RULE = "corpus pieces + special tokens + single-character pieces"
# Tokens whose ids must not move: the model config and RoBERTa's position ids name them by id.
FIXED_TOKENS = ("pad", "unk", "cls", "sep", "bos", "eos")


def trim_student(student: CrfStudent, tokenizer: PreTrainedTokenizerBase, sentences: Iterable[list[str]]
                 ) -> tuple[CrfStudent, PreTrainedTokenizerBase, dict[str, Any]]:
    """Student and tokenizer restricted to the sub-tokens `sentences` (word lists, e.g. the annotated
    corpus's train and val splits) use, plus specials and every single-character piece.

    The student is changed in place (its embedding rows sliced, `config.encoder.vocab_size` and
    `config.provenance["vocab"]` set) and returned. The report holds vocab_before, vocab_after,
    rows_kept_share, parameters_before, parameters_after, parameters_saved, the tokenizer's model type
    and class, and what was kept for which reason.
    """
    encoder_config = student.config.encoder
    config_ids = [getattr(encoder_config, f"{name}_token_id", None) for name in ("pad", "bos", "eos")]
    trimmed, kept, reasons = trim_tokenizer(tokenizer, sentences, fixed_ids=[i for i in config_ids if i is not None])
    parameters_before = parameter_count(student)
    rows_before = keep_rows(student, kept, RULE)
    parameters_after = parameter_count(student)
    report = {
        "tokenizer_model": type(tokenizer.backend_tokenizer.model).__name__,
        "tokenizer_class": type(tokenizer).__name__,
        "vocab_before": rows_before, "vocab_after": len(kept), "rows_kept_share": len(kept) / rows_before,
        "parameters_before": parameters_before, "parameters_after": parameters_after,
        "parameters_saved": parameters_before - parameters_after, "kept": reasons,
    }
    log.info("vocabulary trimmed: %d -> %d rows (%.1f%%), %d parameters saved", rows_before, len(kept),
             100 * report["rows_kept_share"], report["parameters_saved"])
    return student, trimmed, report


def keep_rows(student: CrfStudent, kept: list[int], rule: str) -> int:
    """Keep only embedding rows `kept` (in that order) and size the config by them; returns the rows
    before. `rule` says in the provenance why these rows (trim_student's, or the shape benchmark's share)."""
    embeddings = student.encoder.get_input_embeddings()
    if kept[-1] >= embeddings.num_embeddings:
        raise ValueError(f"the tokenizer has id {kept[-1]} but the student's embeddings only "
                         f"{embeddings.num_embeddings} rows; the student and its tokenizer do not belong together")
    rows_before = embeddings.num_embeddings
    student.encoder.set_input_embeddings(_sliced(embeddings, kept))
    student.config.encoder.vocab_size = len(kept)  # the encoder's own config: from_pretrained sizes the rows by it
    student.config.provenance = {**(student.config.provenance or {}),
                                 "vocab": {"rule": rule, "before": rows_before, "after": len(kept)}}
    return rows_before


def trim_tokenizer(tokenizer: PreTrainedTokenizerBase, sentences: Iterable[list[str]],
                   fixed_ids: Sequence[int] = ()) -> tuple[PreTrainedTokenizerBase, list[int], dict[str, int]]:
    """(trimmed tokenizer of the same class, kept old ids in order, count of kept pieces per reason).

    New id `i` is old id `kept[i]`. `fixed_ids` must keep their ids (a model config's pad/bos/eos ids),
    as the tokenizer's own pad/unk/cls/sep/bos/eos ids do. Raises ValueError for a tokenizer whose
    model is not Unigram or WordPiece, or that is not a fast tokenizer.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer; vocabulary trimming rewrites the "
                         "tokenizers backend (tokenizer.json); set student.vocab: full to keep the vocabulary")
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    pieces = _pieces(tokenizer, backend["model"])
    sentences = [list(words) for words in sentences if words]
    used = {piece_id for words in sentences for word in word_pieces(tokenizer, words) for piece_id in word}
    fixed = [*(getattr(tokenizer, f"{name}_token_id") for name in FIXED_TOKENS), *fixed_ids]
    special = set(range(max((i for i in fixed if i is not None), default=-1) + 1))
    special |= set(tokenizer.all_special_ids) | {token["id"] for token in backend["added_tokens"]}
    special |= _penalty_piece(backend["model"])
    alphabet = {i for i, piece in enumerate(pieces) if _single_character(piece, backend["model"])}
    kept = sorted(used | special | alphabet)
    new_id = {old: new for new, old in enumerate(kept)}
    trimmed = _rebuild(tokenizer, _trimmed_backend(backend, pieces, new_id))
    _check_ids(tokenizer, trimmed, pieces, new_id, fixed)
    changed = segmentation_report(tokenizer, trimmed, sentences)["words_resegmented"]
    if changed:
        raise RuntimeError(f"vocabulary trimming changed the segmentation of {changed} corpus words; "
                           "set student.vocab: full and report this tokenizer")
    reasons = {"corpus_pieces": len(used), "special": len(special - used),
               "single_character": len(alphabet - used - special)}
    return trimmed, kept, reasons


def segmentation_report(full: PreTrainedTokenizerBase, trimmed: PreTrainedTokenizerBase,
                        sentences: Iterable[list[str]]) -> dict[str, Any]:
    """How the trimmed tokenizer cuts `sentences` compared with the full one: the share of words whose
    pieces (as strings) changed (`words_resegmented_share`), the share of the full tokenizer's
    sub-tokens that lie in such words (`subtokens_changed_share`: the inputs the model now sees cut
    otherwise), and the unknown-token rate per sub-token and per word, before and after, with the
    counts they come from. Identical tokenizers give zeros."""
    full_names = full.convert_ids_to_tokens(list(range(len(full))))
    trimmed_names = trimmed.convert_ids_to_tokens(list(range(len(trimmed))))
    counts = dict.fromkeys(("sentences", "words", "words_resegmented", "subtokens_before", "subtokens_after",
                            "subtokens_changed", "unknown_subtokens_before", "unknown_subtokens_after",
                            "unknown_words_before", "unknown_words_after"), 0)
    for words in sentences:
        if not words:
            continue
        counts["sentences"] += 1
        counts["words"] += len(words)
        for before, after in zip(word_pieces(full, words), word_pieces(trimmed, words)):
            if [full_names[i] for i in before] != [trimmed_names[i] for i in after]:
                counts["words_resegmented"] += 1
                counts["subtokens_changed"] += len(before)
            for ids, tokenizer, when in ((before, full, "before"), (after, trimmed, "after")):
                unknown = ids.count(tokenizer.unk_token_id)
                counts[f"subtokens_{when}"] += len(ids)
                counts[f"unknown_subtokens_{when}"] += unknown
                counts[f"unknown_words_{when}"] += unknown > 0
    rates = {"words_resegmented_share": counts["words_resegmented"] / max(1, counts["words"]),
             "subtokens_changed_share": counts["subtokens_changed"] / max(1, counts["subtokens_before"])}
    for when in ("before", "after"):
        rates[f"unknown_per_subtoken_{when}"] = (counts[f"unknown_subtokens_{when}"]
                                                 / max(1, counts[f"subtokens_{when}"]))
        rates[f"unknown_per_word_{when}"] = counts[f"unknown_words_{when}"] / max(1, counts["words"])
    return {**counts, **rates}


def _pieces(tokenizer: PreTrainedTokenizerBase, model: dict[str, Any]) -> list[str]:
    """The model's pieces in id order."""
    kind = model.get("type")
    if kind not in SUPPORTED_MODELS:
        raise ValueError(f"{type(tokenizer).__name__} has a {kind} tokenizer model; vocabulary trimming supports "
                         f"{' and '.join(SUPPORTED_MODELS)} (SentencePiece/CamemBERT/XLM-R, BERT); "
                         "set student.vocab: full to keep the whole vocabulary")
    if kind == "Unigram":
        return [piece for piece, _ in model["vocab"]]
    by_id = sorted(model["vocab"].items(), key=lambda item: item[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise ValueError(f"{type(tokenizer).__name__}: the WordPiece vocabulary's ids are not 0..{len(by_id) - 1}; "
                         "set student.vocab: full to keep it as it is")
    return [piece for piece, _ in by_id]


def _single_character(piece: str, model: dict[str, Any]) -> bool:
    """A piece that stands for one character, at a word's start or inside it."""
    if model["type"] == "Unigram":
        return len(piece) == 1 or (len(piece) == 2 and piece[0] == METASPACE)
    prefix = model["continuing_subword_prefix"]
    return len(piece) == 1 or (len(piece) == len(prefix) + 1 and piece.startswith(prefix))


def _penalty_piece(model: dict[str, Any]) -> set[int]:
    """Unigram scores an unknown character at the lowest piece score minus 10: keeping that piece
    keeps the penalty, so no path through an unknown gains on the corpus's best paths."""
    if model["type"] != "Unigram":
        return set()
    scores = [score for _, score in model["vocab"]]
    return {scores.index(min(scores))}


def _trimmed_backend(backend: dict[str, Any], pieces: list[str], new_id: dict[int, int]) -> str:
    """tokenizer.json of the kept pieces, every id it names mapped to its new id."""
    model = backend["model"]
    if model["type"] == "Unigram":
        model["vocab"] = [model["vocab"][old] for old in new_id]
        model["unk_id"] = _mapped(new_id, model["unk_id"], "the Unigram unk_id")
    else:
        model["vocab"] = {pieces[old]: new for old, new in new_id.items()}
    for token in backend["added_tokens"]:
        token["id"] = new_id[token["id"]]
    if backend.get("padding"):
        backend["padding"]["pad_id"] = _mapped(new_id, backend["padding"]["pad_id"], "the padding pad_id")
    _map_processor_ids(backend.get("post_processor"), lambda i: _mapped(new_id, i, "the post-processor"))
    return json.dumps(backend, ensure_ascii=False)


def _mapped(new_id: dict[int, int], old: int, where: str) -> int:
    if old not in new_id:
        raise ValueError(f"{where} names id {old}, which is not a special token and was trimmed; "
                         "set student.vocab: full to keep the whole vocabulary")
    return new_id[old]


def _map_processor_ids(processor: dict[str, Any] | None, remap: Callable[[int], int]) -> None:
    """Rewrite, in place, the token ids a post-processor inserts (the cls/sep of each sequence)."""
    if processor is None:
        return
    if processor["type"] == "Sequence":
        for inner in processor["processors"]:
            _map_processor_ids(inner, remap)
    elif processor["type"] == "TemplateProcessing":
        for special in processor["special_tokens"].values():
            special["ids"] = [remap(i) for i in special["ids"]]
    elif processor["type"] in ("BertProcessing", "RobertaProcessing"):
        for key in ("cls", "sep"):
            processor[key][1] = remap(processor[key][1])


def _rebuild(tokenizer: PreTrainedTokenizerBase, backend_json: str) -> PreTrainedTokenizerBase:
    """The tokenizer as `model_folders.load_tokenizer` will read it back: saved, its tokenizer.json
    replaced by the trimmed one, loaded by AutoTokenizer.

    The class's other vocabulary files (CamemBERT's sentencepiece.bpe.model, BERT's vocab.txt) are
    removed: they hold the full vocabulary, and a loader that reads them rather than tokenizer.json
    would hand out ids the trimmed embeddings do not have.
    """
    with tempfile.TemporaryDirectory(prefix="nerdistill_vocab_") as work:
        folder = Path(work)
        tokenizer.save_pretrained(folder)
        for name in tokenizer.vocab_files_names.values():
            (folder / name).unlink(missing_ok=True)
        (folder / "tokenizer.json").write_text(backend_json, encoding="utf-8")
        trimmed = AutoTokenizer.from_pretrained(folder)
    if type(trimmed) is not type(tokenizer):
        raise ValueError(f"the trimmed tokenizer reloads as {type(trimmed).__name__}, not "
                         f"{type(tokenizer).__name__}; set student.vocab: full to keep the whole vocabulary")
    return trimmed


def _check_ids(full: PreTrainedTokenizerBase, trimmed: PreTrainedTokenizerBase, pieces: list[str],
               new_id: dict[int, int], fixed: list[int | None]) -> None:
    """Every kept piece reads back at its new id, and the fixed ids did not move."""
    expected = [new_id[old] for old in new_id]
    found = trimmed.convert_tokens_to_ids([pieces[old] for old in new_id])
    if found != expected or len(trimmed) != len(new_id):
        wrong = next((pieces[old] for old, i in zip(new_id, found) if i != new_id[old]), None)
        raise RuntimeError(f"the trimmed {type(trimmed).__name__} has {len(trimmed)} tokens for {len(new_id)} kept "
                           f"pieces (first misplaced piece: {wrong!r}); set student.vocab: full")
    for name in FIXED_TOKENS:
        before, after = getattr(full, f"{name}_token_id"), getattr(trimmed, f"{name}_token_id")
        if before != after:
            raise RuntimeError(f"trimming moved the {name} token from id {before} to {after}; the model's "
                               "config and position ids name it by id; set student.vocab: full")
    moved = [i for i in fixed if i is not None and new_id.get(i) != i]
    if moved:
        raise RuntimeError(f"trimming moved the fixed ids {moved}; set student.vocab: full")


def _sliced(embeddings: nn.Embedding, kept: list[int]) -> nn.Embedding:
    """An embedding holding rows `kept` of `embeddings`, in that order."""
    padding = embeddings.padding_idx
    sliced = nn.Embedding(len(kept), embeddings.embedding_dim, padding_idx=None if padding is None else
                          kept.index(padding), device=embeddings.weight.device, dtype=embeddings.weight.dtype)
    with torch.no_grad():
        sliced.weight.copy_(embeddings.weight[torch.tensor(kept, device=embeddings.weight.device)])  # (V_kept, H)
    return sliced
