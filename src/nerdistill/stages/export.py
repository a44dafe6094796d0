"""Export stage: the final student as it ships, ONNX fp32 and ONNX int8, and how faithful each is.

The student's vocabulary is trimmed first when `student.vocab` is `corpus`: to the sub-tokens the
annotated train and val splits use, never the test split, on which every figure below is measured;
then `export.export_student` traces it once and writes the fp32 and int8 folders together
(`export.per_channel`, `export.quantize_embeddings`).

Fidelity, in metrics/export.json: per folder, the bytes of `model.onnx`, the largest emission
difference from the (trimmed) PyTorch student on an example batch, and, on the annotated test
split with the untrimmed fp32 PyTorch student's tags as the reference, the strict IOB2 entity F1
of its tags (1.0 when trimming and quantisation changed no entity; 0.0 when the reference has no
entity at all, see `reference_entities`) and the share of sentences tagged identically. Since
trimming never saw that split, its words can be cut into other pieces than the student was trained
on: `heldout_segmentation` says how many (`vocab.segmentation_report`: `words_resegmented_share`,
`subtokens_changed_share` and their counts; zeros with `student.vocab: full`), the price of trimming
on text the corpus does not cover. How good the shipped model is (against the teacher, against gold)
is evaluate's job; this says what exporting cost.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from nerdistill.annotated import AnnotatedDir
from nerdistill.export import MODEL_FILE, export_student, load_student
from nerdistill.metrics import entity_scores
from nerdistill.params import Params
from nerdistill.tracking import ONNX_DIGEST, log_onnx_model, tracked_stage
from nerdistill.tagger.load import load_tagger
from nerdistill.vocab import segmentation_report, trim_student

log = logging.getLogger(__name__)

# What the vocabulary is trimmed to; the test split stays unseen, to measure what trimming changes.
TRIM_SPLITS = ("train", "val")


def run(params: Params, model_dir: Path, data_dir: Path, fp32_dir: Path, int8_dir: Path) -> dict:
    annotated = AnnotatedDir(data_dir)
    test = [record["tokens"] for record in annotated.split("test")]
    student, full_tokenizer = load_student(model_dir)
    if params.student.vocab == "corpus":
        sentences = [record["tokens"] for name in TRIM_SPLITS for record in annotated.split(name)]
        student, tokenizer, vocab = trim_student(student, full_tokenizer, sentences)
        vocab = {"splits": list(TRIM_SPLITS), **vocab}
    else:
        tokenizer, vocab = full_tokenizer, {"size": len(full_tokenizer)}
    heldout = {"split": "test", **segmentation_report(full_tokenizer, tokenizer, test)}
    exports = export_student(student, tokenizer, fp32_dir, int8_dir, params.export, source=str(model_dir))
    del student  # the reference below is the saved, untrimmed student

    reference = load_tagger(model_dir).tag_words(test, progress="export: PyTorch reference")
    for name, folder in (("fp32", fp32_dir), ("int8", int8_dir)):
        tags = load_tagger(folder).tag_words(test, progress=f"export: ONNX {name}")
        scores = entity_scores(reference, tags)
        exports[name]["f1_vs_pytorch"] = scores["f1"]
        exports[name]["sentences_identical"] = sum(ours == theirs for ours, theirs in zip(tags, reference)) / len(test)
    exports["int8"]["bytes_vs_fp32"] = exports["int8"]["bytes"] / exports["fp32"]["bytes"]
    log.info("export: int8 %.2f MB (%.3f of fp32), entity F1 vs the PyTorch student %.4f on the test split, "
             "%.2f%% of its words cut otherwise by the trimmed vocabulary", exports["int8"]["bytes"] / 1e6,
             exports["int8"]["bytes_vs_fp32"], exports["int8"]["f1_vs_pytorch"],
             100 * heldout["words_resegmented_share"])
    return {"source": str(model_dir), "vocab": {"mode": params.student.vocab, **vocab},
            "test_sentences": len(test), "reference_entities": scores["support"],
            "heldout_segmentation": heldout, **exports}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="student folder (finetune's output)")
    parser.add_argument("--data", type=Path, required=True, help="annotate's output folder")
    parser.add_argument("--fp32", type=Path, required=True, help="folder for the fp32 ONNX export")
    parser.add_argument("--int8", type=Path, required=True, help="folder for the int8 ONNX export")
    parser.add_argument("--metrics", type=Path, required=True)


def main(args: argparse.Namespace, params: Params) -> int:
    tracked_stage("export", params, args.params, args.metrics, lambda: logged(
        run(params, model_dir=args.model, data_dir=args.data, fp32_dir=args.fp32, int8_dir=args.int8), args.int8))
    return 0


def logged(metrics: dict, int8_dir: Path) -> dict:
    """The int8 export, what ships, logged as an MLflow model of the stage's run; its digest in export.json,
    where the gate reads which model it judged (also when DVC restores this stage from its cache)."""
    metrics["int8"][ONNX_DIGEST] = log_onnx_model(int8_dir / MODEL_FILE)
    return metrics
