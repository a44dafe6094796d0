"""Scale benchmark: what one distill step and the teacher's annotate pass cost at CamemBERT-base
shape on long and short lines, for this checkout's code and for the code of an earlier revision,
on the same machine in the same run.

Distill: a random-weight teacher with camembert-ner's shape (shape_bench.SHAPES) and a student built
from it by params.yaml (`student.teacher_layers`), `train.batch_size` rows of `--words` words each
(valid IOB2 labels, one or two sub-tokens a word), distill's second-phase loss weights (every term on,
hidden states included). One step = the Trainer's `training_step` (teacher forward, student forward,
the four losses, backward) + the optimizer step, timed after `--warmup` steps; `samples_per_s` =
rows / median step. `crf_share` = the CRF terms alone (the NLL and the KD marginals, forward and
backward, on emissions of the same shape) / median step. Each (revision, length) runs in a fresh
process that imports that revision's `src/` (extracted with `git archive`), alternating revisions.

Annotate: this checkout's teacher tagger (`teacher.max_length`, `teacher.stride`, `teacher.batch_size`)
on `--annotate-lines` lines of each length: sentences/s.

Peak memory: scripts/rss_probe.py's figures for annotate and distill's data loading at 20,000 and
200,000 lines, when `--rss` is given (long: annotate tags every line), or read from an earlier run's
output with `--rss-json`.

    .venv/bin/python scripts/scale_bench.py --baseline d2fab59 --out metrics/scale_bench.json
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IO_LABELS = {0: "O", 1: "I-LOC", 2: "I-PER", 3: "I-MISC", 4: "I-ORG"}  # camembert-ner's
log = logging.getLogger("scale_bench")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.measure_step:
        print(json.dumps(_measure_step(args)))
        return 0
    with tempfile.TemporaryDirectory(prefix="scale_bench_") as work:
        result = run(args, Path(work))
    from nerdistill.io import write_json

    write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return 0


def run(args: argparse.Namespace, work: Path) -> dict:
    before_src, before_params = _extract(args.baseline, work / "before")
    sources = {"before": (before_src, before_params), "after": (REPO / "src", REPO / "params.yaml")}
    steps: dict[str, dict[str, list[dict]]] = {name: {str(w): [] for w in args.words} for name in sources}
    for round_no in range(args.rounds):
        for words in args.words:
            order = list(sources) if round_no % 2 == 0 else list(sources)[::-1]
            for name in order:
                log.info("round %d: %s, %d words", round_no + 1, name, words)
                steps[name][str(words)].append(_step_in_subprocess(*sources[name], words, args))
    distill = {name: {words: _summary(runs) for words, runs in by_words.items()} for name, by_words in steps.items()}
    speedup = {words: distill["after"][words]["samples_per_s"] / distill["before"][words]["samples_per_s"]
               for words in distill["after"]}
    result = {
        "what": "one distill step (teacher forward, student forward, four losses, backward, optimizer step) and "
                "the teacher's annotate pass at CamemBERT-base shape, random weights; before = code of "
                f"{args.baseline}, after = this checkout",
        "machine": _machine(args.threads),
        "shape": args.shape, "batch_size": args.batch_size, "steps": {"warmup": args.warmup, "timed": args.steps,
                                                                     "rounds": args.rounds},
        "distill": distill, "speedup_samples_per_s": speedup,
        "annotate": _annotate(args, work),
    }
    if args.rss_json:
        result["peak_rss"] = json.loads(args.rss_json.read_text(encoding="utf-8"))
    elif args.rss:
        result["peak_rss"] = _rss()
    result["machine"]["load_average_at_end"] = os.getloadavg()
    return result


def _extract(revision: str, dest: Path) -> tuple[Path, Path]:
    """(`src/`, `params.yaml`) of `revision`, as git stores them."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", revision, "src", "params.yaml"], cwd=REPO, capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "src", dest / "params.yaml"


def _step_in_subprocess(src: Path, params: Path, words: int, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--measure-step", "--params", str(params), "--words", str(words),
               "--shape", args.shape, "--batch-size", str(args.batch_size), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--threads", str(args.threads)]
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"measuring {src} at {words} words failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _summary(runs: list[dict]) -> dict:
    step = statistics.median(s for run in runs for s in run["step_s"])
    crf = statistics.median(s for run in runs for s in run["crf_s"])
    every_step = [s for run in runs for s in run["step_s"]]
    return {"samples_per_s": runs[0]["rows"] / step, "step_s": step, "crf_s": crf, "crf_share": crf / step,
            "step_s_min_max": [min(every_step), max(every_step)], "subtokens_per_row": runs[0]["subtokens_per_row"]}


def _measure_step(args: argparse.Namespace) -> dict:
    """One revision's distill step, in this process (its `src/` is first on PYTHONPATH)."""
    import torch
    from transformers import CamembertConfig, CamembertForTokenClassification

    from nerdistill.labels import student_labels
    from nerdistill.losses import Curriculum, DistillContext
    from nerdistill.modeling import CrfStudent, build_student
    from nerdistill.params_reader import load_params
    from nerdistill.trainer import DistillTrainer, training_arguments
    from nerdistill.params import Schedule

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    params = load_params(args.params)
    teacher = CamembertForTokenClassification(CamembertConfig(**_shape(args.shape), id2label=IO_LABELS)).eval()
    names = student_labels(IO_LABELS, params.annotate.drop_types)
    student = build_student(teacher, dict(enumerate(names)), list(params.student.teacher_layers),
                            params.student.dropout, provenance={})
    zeros = [0.0] * len(names)
    prior = {"labels": names, "start": zeros, "end": zeros, "transitions": [zeros] * len(names)}
    weights = params.distill.phase2_weights
    context = DistillContext.build(student.config.id2label, len(params.student.teacher_layers), IO_LABELS, prior,
                                   params.train.layer_map.pairs(), params.train.temperature,
                                   Curriculum.constant(weights))
    batch = _batch(names, args.batch_size, args.words[0], teacher.config.vocab_size)
    with tempfile.TemporaryDirectory() as scratch:
        settings = type(params.train)(batch_size=args.batch_size, precision="fp32")
        trainer = DistillTrainer(model=student, args=training_arguments(settings, Schedule(), 0, Path(scratch)),
                                 eval_dataset=[batch], teacher=teacher, context=context, max_nonfinite_steps=0,
                                 crf_lr_multiplier=100.0)
        trainer.create_optimizer()
        trainer.current_gradient_accumulation_steps = 1  # what Trainer's loop sets before training_step
        step_s = []
        for step in range(args.warmup + args.steps):
            started = time.perf_counter()
            trainer.training_step(student, batch)
            trainer.optimizer.step()
            trainer.optimizer.zero_grad()
            if step >= args.warmup:
                step_s.append(time.perf_counter() - started)
        crf_s = [_crf_terms_seconds(student, batch, params.train.temperature, CrfStudent) for _ in range(args.steps)]
    return {"rows": args.batch_size, "subtokens_per_row": int(batch["attention_mask"].sum(1).float().mean()),
            "step_s": step_s, "crf_s": crf_s}


def _crf_terms_seconds(student, batch: dict, temperature: float, student_class: type) -> float:
    """The CRF's two loss terms, forward and backward, on emissions shaped like the step's."""
    import torch

    emissions = torch.randn(*batch["labels"].shape, student.config.num_labels, requires_grad=True)
    mask = batch["word_mask"]
    started = time.perf_counter()
    if hasattr(student_class, "crf_terms"):  # one pass for both terms (this code)
        nll, marginals = student.crf_terms(emissions, batch["labels"], mask, kd_temperature=temperature)
    else:  # pytorch-crf's NLL, then forward-backward marginals: the code before
        from nerdistill.crf import crf_log_marginals

        nll = student.nll(emissions, batch["labels"], mask)
        scores = (score / temperature for score in (student.crf.start_transitions, student.crf.end_transitions,
                                                    student.crf.transitions))
        marginals = crf_log_marginals(emissions / temperature, mask.bool(), *scores).exp()
    (nll + marginals.sum()).backward()
    return time.perf_counter() - started


def _batch(names: list[str], rows: int, words: int, vocab_size: int) -> dict:
    """`rows` lines of `words` words, 1 or 2 sub-tokens each, valid IOB2 labels (an entity is B then Is)."""
    import torch

    rng = random.Random(0)
    input_ids, word_index, labels = [], [], []
    for _ in range(rows):
        ids, index, tags, previous = [0], [], [], "O"
        for _ in range(words):
            index.append(len(ids))
            ids.extend(rng.randrange(5, vocab_size) for _ in range(rng.choice((1, 1, 2))))
            tag = _next_tag(rng, previous, names)
            tags.append(names.index(tag))
            previous = tag
        ids.append(2)
        input_ids.append(ids)
        word_index.append(index)
        labels.append(tags)
    width = max(map(len, input_ids))
    pad = lambda row, value: row + [value] * (width - len(row))  # noqa: E731
    return {"input_ids": torch.tensor([pad(r, 1) for r in input_ids]),
            "attention_mask": torch.tensor([pad([1] * len(r), 0) for r in input_ids]),
            "word_index": torch.tensor(word_index), "word_mask": torch.ones(rows, words, dtype=torch.bool),
            "labels": torch.tensor(labels), "starts_line": torch.ones(rows, dtype=torch.bool),
            "ends_line": torch.ones(rows, dtype=torch.bool)}


def _next_tag(rng: random.Random, previous: str, names: list[str]) -> str:
    if previous != "O" and rng.random() < 0.5:
        return "I-" + previous[2:]
    return "O" if rng.random() < 0.8 else rng.choice([n for n in names if n.startswith("B-")])


def _annotate(args: argparse.Namespace, work: Path) -> dict:
    """Sentences/s of this checkout's teacher tagger over lines of each length."""
    import torch
    from transformers import CamembertConfig, CamembertForTokenClassification

    from nerdistill.demo.teacher import train_tokenizer
    from nerdistill.params_reader import load_params
    from nerdistill.tagger.teacher import teacher_tagger

    torch.set_num_threads(args.threads)
    params = load_params(REPO / "params.yaml")
    folder = work / "teacher"
    tokenizer_dir = train_tokenizer(REPO / "data" / "raw" / "corpus.txt", work / "tokenizer")
    from nerdistill.model_folders import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    # The stand-in tokenizer's own rows (the loader refuses a tokenizer smaller than the table): the
    # embedding lookup's cost does not depend on the table's size.
    shape = {**_shape(args.shape), "vocab_size": len(tokenizer)}
    CamembertForTokenClassification(CamembertConfig(**shape, id2label=IO_LABELS)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    settings = type(params.teacher)(**{**params.teacher.__dict__, "model_name": str(folder)})
    tagger = teacher_tagger(settings, drop_types=params.annotate.drop_types)
    vocabulary = [w for line in (REPO / "data" / "raw" / "corpus.txt").read_text(encoding="utf-8").split("\n")
                  for w in line.split()]
    rng = random.Random(1)
    figures = {}
    for words in args.words:
        lines = [[rng.choice(vocabulary) for _ in range(words)] for _ in range(args.annotate_lines)]
        tagger.tag_words_with_probs(lines[:2])
        started = time.perf_counter()
        tagger.tag_words_with_probs(lines)
        seconds = time.perf_counter() - started
        figures[str(words)] = {"sentences_per_s": len(lines) / seconds, "lines": len(lines), "seconds": seconds}
    return figures


def _rss() -> dict:
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "rss_probe.py")], capture_output=True, text=True,
                          check=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    return json.loads(done.stdout[done.stdout.index("{"):])


def _shape(name: str) -> dict:
    sys.path.insert(0, str(REPO / "scripts"))
    from shape_bench import SHAPES

    return SHAPES[name]


def _machine(threads: int) -> dict:
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "threads": threads, "device": "cpu", "torch": torch.__version__,
            "load_average_at_start": os.getloadavg()}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="d2fab59", help="git revision whose code is 'before' (default: the "
                        "last commit before real-scale training)")
    parser.add_argument("--shape", default="camembert-base", choices=("camembert-base", "tiny"))
    parser.add_argument("--words", type=int, nargs="+", default=[40, 350])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="processes per (revision, length), alternating")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--annotate-lines", type=int, default=64)
    parser.add_argument("--rss", action="store_true", help="also run scripts/rss_probe.py (long: annotate tags "
                        "200,000 lines)")
    parser.add_argument("--rss-json", type=Path, help="take the peak-memory figures from this earlier output of "
                        "scripts/rss_probe.py instead")
    parser.add_argument("--out", type=Path, default=REPO / "metrics" / "scale_bench.json")
    parser.add_argument("--measure-step", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--params", type=Path, help=argparse.SUPPRESS)
    return parser


if __name__ == "__main__":
    sys.exit(main())
