"""Export-teacher stage: the teacher itself as ONNX dynamic int8, what a user gets without distilling.

`teacher.model_name` goes down the student's export path (`export.export_teacher`: eager attention,
onnxruntime dynamic int8 with `export.per_channel` and `export.quantize_embeddings`) into one folder:
`model.onnx`, the tokenizer and `nerdistill_onnx.json` (`exported: teacher`, its IO/IOB labels, the
window `teacher.max_length` / `teacher.stride`, parameters, bytes). `tagger.load.load_tagger` runs it
as the teacher runs (argmax at each word's first sub-token), so evaluate and bench score and time it
beside the students (`--model teacher_int8=models/teacher_int8`).

Its metrics: the folder's bytes and the teacher's parameters, the largest logit difference from
PyTorch on an example batch, and on a few fixed sentences the strict IOB2 entity F1 of its tags
against the PyTorch teacher's (`f1_vs_pytorch`, 0.0 when the teacher finds no entity there, see
`reference_entities`) and the share of sentences tagged identically.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from nerdistill.export import export_teacher
from nerdistill.metrics import entity_scores
from nerdistill.params import Params
from nerdistill.tagger.load import load_tagger
from nerdistill.tagger.teacher import teacher_tagger
from nerdistill.text import split_words
from nerdistill.tracking import tracked_stage

log = logging.getLogger(__name__)

# A quick check that quantisation kept the teacher's entities, not a score: evaluate scores it on the
# test split. Persons, places, organisations and other names, with the punctuation around them.
FIDELITY_TEXTS = (
    "Le docteur Jean Martin a reçu Mme Durand à l'hôpital Saint-Louis de Paris.",
    "Marie habite à Lyon depuis qu'elle travaille chez Renault.",
    "Emmanuel Macron a rencontré Angela Merkel à Berlin le 3 mars.",
    "La Société Générale a ouvert une agence à Bordeaux, près de la gare Saint-Jean.",
    "Victor Hugo est né à Besançon et repose au Panthéon.",
    "L'Organisation mondiale de la santé siège à Genève.",
    "Pierre et Sophie Lefèvre ont visité le musée du Louvre avec l'association Les Amis du Patrimoine.",
    "Le Tour de France partira de Bruxelles en juillet.",
)


def run(params: Params, out_dir: Path) -> dict:
    # The teacher as annotate, evaluate and bench tag it (its window from params): exported, then the reference.
    reference = teacher_tagger(params.teacher, "cpu")
    started = time.perf_counter()
    exported = export_teacher(reference.backend.model, reference.words.tokenizer, out_dir, params.export,
                              source=params.teacher.model_name, window=reference.window)
    log.info("export-teacher: %s exported in %.1f s", params.teacher.model_name, time.perf_counter() - started)

    sentences = [[word.text for word in split_words(text)] for text in FIDELITY_TEXTS]
    expected = reference.tag_words(sentences)
    tags = load_tagger(out_dir, device="cpu").tag_words(sentences)
    scores = entity_scores(expected, tags)
    metrics = {key: exported[key] for key in ("source", "labels", "max_length", "stride", "parameters", "bytes",
                                              "max_abs_emission_diff")}
    metrics |= {"fidelity_sentences": len(sentences), "reference_entities": scores["support"],
                "f1_vs_pytorch": scores["f1"],
                "sentences_identical": sum(ours == theirs for ours, theirs in zip(tags, expected)) / len(sentences)}
    log.info("export-teacher: int8 %.2f MB, %d parameters, entity F1 vs the PyTorch teacher %.4f (%d entities)",
             metrics["bytes"] / 1e6, metrics["parameters"], metrics["f1_vs_pytorch"], metrics["reference_entities"])
    return metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for the teacher's int8 ONNX export (model.onnx, tokenizer, nerdistill_onnx.json)")
    parser.add_argument("--metrics", type=Path, required=True,
                        help="JSON file for its bytes, parameters and fidelity to the PyTorch teacher")


def main(args: argparse.Namespace, params: Params) -> int:
    tracked_stage("export_teacher", params, args.params, args.metrics, lambda: run(params, out_dir=args.out))
    return 0
