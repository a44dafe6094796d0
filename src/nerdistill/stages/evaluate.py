"""Evaluate stage: seqeval strict IOB2 scores of the teacher and every model on the same words.

References:
- "agreement": the teacher's own IOB2 tags in test.jsonl. The teacher scores ~1.0 there by
  construction, so for a student this is its agreement with the teacher, not its quality.
- "gold" (when evaluate.gold_path is set): a CoNLL file. Gold types outside the student's label
  set (label2id.json, e.g. MISC) are mapped to O, since no model here may predict them.
F1 drop = teacher - model, in points (F1 x 100), per reference. Every model is tagged the same
way, ONNX exports included (the one that ships is scored like the student it came from). `models`
is ordered: the teacher first; the final student, whose confusion matrix and worst sentences are
written, is the last student folder (`model_folders.model_roles`).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tqdm import tqdm

from nerdistill.annotated import AnnotatedDir
from nerdistill.io import write_csv, write_jsonl
from nerdistill.metrics import entity_scores, read_conll, restrict_types, type_confusion
from nerdistill.params import Params
from nerdistill.tracking import tracked_stage
from nerdistill.model_folders import add_model_arguments, model_roles, named_models
from nerdistill.plots import plot_confusion
from nerdistill.tagger.load import compared_tagger

log = logging.getLogger(__name__)

Tagging = list[list[str]]


def run(params: Params, data_dir: Path, models: dict[str, str], per_class_csv: Path, confusion_png: Path,
        errors_path: Path) -> dict:
    annotated = AnnotatedDir(data_dir)
    teacher, final = model_roles(models)
    kept_types = annotated.kept_types()
    test = annotated.split("test")
    references = {"agreement": ([r["tokens"] for r in test], [r["ner_tags"] for r in test])}
    if params.evaluate.gold_path:
        references["gold"] = _gold(params.evaluate.gold_path, kept_types)

    predictions = {reference: {} for reference in references}
    for name, path in tqdm(models.items(), desc="evaluate", unit="model"):
        tagger = compared_tagger(path, params.teacher)
        for reference, (words, _) in references.items():
            tags = tagger.tag_words(words, batch_size=params.evaluate.batch_size)
            predictions[reference][name] = [restrict_types(t, kept_types) for t in tags]

    metrics: dict = {"teacher": teacher, "final": final, "test_sentences": len(test),
                     "kept_types": sorted(kept_types)}
    drops = {}
    for reference, (_, gold_tags) in references.items():
        scores = {name: entity_scores(gold_tags, tags) for name, tags in predictions[reference].items()}
        metrics[reference] = scores
        drops[reference] = {name: 100 * (scores[teacher]["f1"] - s["f1"]) for name, s in scores.items()
                            if name != teacher}
        log.info("%s F1: %s", reference, {name: round(s["f1"], 4) for name, s in scores.items()})
    metrics["f1_drop_points"] = drops

    shown = "gold" if "gold" in references else "agreement"
    words, gold_tags = references[shown]
    _write_per_class(per_class_csv, metrics, list(references))
    types, matrix = type_confusion(gold_tags, predictions[shown][final])
    plot_confusion(types, matrix, confusion_png, f"{final} vs the {shown} reference, per word")
    metrics["error_samples"] = write_jsonl(errors_path, _worst(
        words, gold_tags, predictions[shown], teacher, final, shown, params.evaluate.error_samples))
    return metrics


def _gold(path: str, kept_types: set[str]) -> tuple[Tagging, Tagging]:
    sentences = read_conll(path)
    dropped = sorted({tag[2:] for _, tags in sentences for tag in tags if tag != "O"} - kept_types)
    if dropped:
        log.info("gold types %s are not in the student's label set: mapped to O", dropped)
    return [words for words, _ in sentences], [restrict_types(tags, kept_types) for _, tags in sentences]


def _write_per_class(path: Path, metrics: dict, references: list[str]) -> None:
    rows = []
    for reference in references:
        for name, scores in metrics[reference].items():
            rows.append([name, reference, "micro", scores["precision"], scores["recall"], scores["f1"],
                         scores["support"]])
            rows.extend([name, reference, entity_type, s["precision"], s["recall"], s["f1"], s["support"]]
                        for entity_type, s in scores["per_type"].items())
    write_csv(path, ["model", "reference", "type", "precision", "recall", "f1", "support"], rows)


def _worst(words: Tagging, reference: Tagging, predictions: dict[str, Tagging], teacher: str, final: str,
           reference_name: str, limit: int) -> list[dict]:
    """The `limit` sentences where the final student's tags differ from the reference on most words."""
    student = predictions[final]
    wrong = [(sum(r != p for r, p in zip(ref, pred)), index)
             for index, (ref, pred) in enumerate(zip(reference, student))]
    worst = sorted((item for item in wrong if item[0] > 0), key=lambda item: (-item[0], item[1]))[:limit]
    rows = []
    for errors, index in worst:
        row = {"index": index, "word_errors": errors, "reference": reference_name, "model": final,
               "words": words[index], "reference_tags": reference[index], "model_tags": student[index]}
        if reference_name == "gold":
            row["teacher_tags"] = predictions[teacher][index]
        rows.append(row)
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, "score")
    parser.add_argument("--per-class", type=Path, required=True, help="P/R/F1 per model, reference and type (CSV)")
    parser.add_argument("--confusion", type=Path, required=True, help="the final student's type confusion (PNG)")
    parser.add_argument("--errors", type=Path, required=True, help="the final student's worst sentences (JSONL)")


def main(args: argparse.Namespace, params: Params) -> int:
    models = named_models(params.teacher.model_name, args.model)
    tracked_stage("evaluate", params, args.params, args.metrics, lambda: run(
        params, data_dir=args.data, models=models, per_class_csv=args.per_class, confusion_png=args.confusion,
        errors_path=args.errors), artifacts=(args.per_class, args.confusion, args.errors))
    return 0
