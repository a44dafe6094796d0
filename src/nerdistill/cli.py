"""`nerdistill <command>`: one console script, a thin entry per stage.

Each entry parses paths (they are written once, in dvc.yaml), loads and validates params,
opens the stage's MLflow run, calls the stage's pure `run`, and writes its metrics file.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
from pathlib import Path
from typing import Any, Callable

from nerdistill import tracking
from nerdistill.io import InputError, check_writable, read_json
from nerdistill.params import Params, ParamsError
from nerdistill.params_reader import load_params, stage_param_keys
from nerdistill.results import gate_summary

log = logging.getLogger("nerdistill")


def _model_pairs(values: list[str]) -> dict[str, str]:
    models: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise InputError(f"--model {value!r}: expected NAME=FOLDER, e.g. --model final=models/student_final")
        models[name] = path
    return models


def _stage(name: str) -> Any:
    return importlib.import_module(f"nerdistill.stages.{name}")


def _declared_keys(args: argparse.Namespace, stage: str) -> tuple[str, ...] | None:
    """The params keys dvc.yaml (beside the params file) declares for `stage`: what its MLflow run
    logs. Run by hand outside a DVC repository, the stage logs them all."""
    dvc_yaml = args.params.parent / "dvc.yaml"
    if not dvc_yaml.is_file():
        log.warning("%s not found: logging every param on the %s run", dvc_yaml, stage)
        return None
    return stage_param_keys(dvc_yaml, stage)


def _tracked(args: argparse.Namespace, stage: str, params: Params, metrics_path: Path, call: Callable[[], dict],
             artifacts: tuple[Path, ...] = (), to_parent: bool = False) -> dict:
    """Run `call` in the stage's MLflow run and write its metrics (also on the parent run when `to_parent`:
    gate's flat figures of the judged variant become the parent's `gate.f1`, `gate.doc_p50_ms`, ...)."""
    if not tracking.is_main_process():
        return call()  # the main process of a distributed run tracks and writes the metrics
    with tracking.stage_run(stage, params, _declared_keys(args, stage)) as run:
        metrics = call()
        run.write_metrics(metrics_path, metrics, to_parent=to_parent)
        for artifact in artifacts:
            run.log_artifact(artifact)
        if stage == "gate":
            run.set_parent_tag("gate", metrics["decision"])
    return metrics


def cmd_annotate(args: argparse.Namespace, params: Params) -> int:
    from nerdistill.annotated import AnnotatedDir

    annotated = AnnotatedDir(args.out)
    run = lambda: _stage("annotate").run(params, corpus=args.corpus, out_dir=args.out)
    _tracked(args, "annotate", params, args.metrics, run,
             artifacts=(annotated.label2id_path, annotated.transitions_path))
    return 0


def cmd_distill(args: argparse.Namespace, params: Params) -> int:
    run = lambda: _stage("distill").run(
        params, data_dir=args.data, out_dir=args.out, history_csv=args.history,
        components_csv=args.components, plot_png=args.plot, checkpoint_dir=args.checkpoints,
        resume=args.resume)
    _tracked(args, "distill", params, args.metrics, run, artifacts=(args.history, args.components, args.plot))
    return 0


def cmd_prune(args: argparse.Namespace, params: Params) -> int:
    run = lambda: _stage("prune").run(
        params, model_dir=args.model, data_dir=args.data, out_dir=args.out,
        importance_json=args.importance, heatmap_png=args.heatmap)
    _tracked(args, "prune", params, args.metrics, run,
             artifacts=(args.importance, args.heatmap, args.out / "heads_pruned.json"))
    return 0


def cmd_finetune(args: argparse.Namespace, params: Params) -> int:
    run = lambda: _stage("finetune").run(
        params, model_dir=args.model, data_dir=args.data, out_dir=args.out, history_csv=args.history,
        plot_png=args.plot, checkpoint_dir=args.checkpoints, resume=args.resume)
    _tracked(args, "finetune", params, args.metrics, run, artifacts=(args.history, args.plot, args.out))
    return 0


def cmd_export(args: argparse.Namespace, params: Params) -> int:
    run = lambda: _stage("export").run(params, model_dir=args.model, data_dir=args.data, fp32_dir=args.fp32,
                                       int8_dir=args.int8)
    _tracked(args, "export", params, args.metrics, run, artifacts=(args.int8,), to_parent=True)
    return 0


def cmd_evaluate(args: argparse.Namespace, params: Params) -> int:
    models = {"teacher": params.teacher.model_name, **_model_pairs(args.model)}
    run = lambda: _stage("evaluate").run(
        params, data_dir=args.data, models=models, per_class_csv=args.per_class,
        confusion_png=args.confusion, errors_path=args.errors)
    _tracked(args, "evaluate", params, args.metrics, run,
             artifacts=(args.per_class, args.confusion, args.errors), to_parent=True)
    return 0


def cmd_bench(args: argparse.Namespace, params: Params) -> int:
    models = {"teacher": params.teacher.model_name, **_model_pairs(args.model)}
    run = lambda: _stage("bench").run(params, data_dir=args.data, models=models, latency_png=args.plot)
    _tracked(args, "bench", params, args.metrics, run, artifacts=(args.plot,), to_parent=True)
    return 0


def cmd_gate(args: argparse.Namespace, params: Params) -> int:
    gate = _stage("gate")
    eval_metrics, bench_metrics = read_json(args.eval), read_json(args.bench)
    result = _tracked(args, "gate", params, args.out, lambda: gate.run(params, eval_metrics, bench_metrics),
                      to_parent=True)
    print(gate_summary(result))
    return gate.exit_code(result, params)



def cmd_predict(args: argparse.Namespace, params: Params | None) -> int:
    from nerdistill.streaming import predict_stream
    from nerdistill.tagger import NerTagger

    if args.output != "-":
        check_writable(args.output)  # before the model loads, not after
    tagger = NerTagger.load(str(args.model), source="--model")
    counts = predict_stream(tagger, args.input, args.output, batch_size=args.batch_size, input_format=args.format)
    log.info("predict: %s", counts)
    return 1 if counts.get("failed", 0) else 0


def cmd_make_corpus(args: argparse.Namespace, params: Params | None) -> int:
    from nerdistill.demo.corpus import write_corpus

    write_corpus(args.out, seed=args.seed, n=args.n)
    return 0


def cmd_demo_teacher(args: argparse.Namespace, params: Params | None) -> int:
    from nerdistill.demo.teacher import build_demo_teacher

    build_demo_teacher(args.out, seed=args.seed)
    return 0


def cmd_report(args: argparse.Namespace, params: Params | None) -> int:
    from nerdistill.report import write_report

    write_report(Path.cwd(), args.out, experiments=args.exp or None, sweeps=tuple(args.sweep))
    return 0


def cmd_sweep(args: argparse.Namespace, params: Params) -> int:
    from nerdistill.dvc_queue import run_sweep
    from nerdistill.report import write_report
    from nerdistill.sweep import RESULTS_DIR, SUCCESS

    results_path = args.results or RESULTS_DIR / f"{args.grid.stem}.json"
    results = run_sweep(args.grid, params, args.set_param, Path.cwd(), args.jobs, results_path, args.dry_run)
    if args.dry_run:
        return 0
    report = args.report or Path("reports") / f"sweep-{args.grid.stem}.html"
    write_report(Path.cwd(), report, sweeps=(results_path,))
    return 0 if all(point["status"] == SUCCESS for point in results["points"]) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nerdistill", description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable, help_text: str, needs_params: bool = True,
            epilog: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=epilog)
        p.set_defaults(func=func, needs_params=needs_params)
        return p

    p = add("annotate", cmd_annotate, "teacher auto-annotates the raw corpus into train/val/test splits",
            epilog="Bad input (a byte that is not UTF-8, malformed JSONL, a repeated id) stops with FILE:LINE and "
                   "exit status 2; blank, repeated and over-long lines are skipped and counted in the metrics. "
                   "The output folder is replaced whole at the end: on Ctrl-C or SIGTERM the previous one "
                   "stays as it was (exit status 130 or 143).")
    p.add_argument("--corpus", type=Path, required=True, help=".txt (one phrase a line) or .jsonl with a text field")
    p.add_argument("--out", type=Path, required=True, help="folder for {train,val,test}.jsonl, label2id.json, transitions.json")
    p.add_argument("--metrics", type=Path, required=True)

    for name, func, help_text in (("distill", cmd_distill, "train the CRF student from the teacher (Patient KD)"),
                                  ("finetune", cmd_finetune, "recover the pruned student with the teacher")):
        p = add(name, func, help_text)
        if name == "finetune":
            p.add_argument("--model", type=Path, required=True, help="pruned student folder")
        p.add_argument("--data", type=Path, required=True, help="annotate's output folder")
        p.add_argument("--out", type=Path, required=True, help="folder for the best student")
        p.add_argument("--metrics", type=Path, required=True)
        p.add_argument("--history", type=Path, required=True, help="per-epoch history CSV")
        if name == "distill":
            p.add_argument("--components", type=Path, required=True, help="per-epoch loss components CSV")
        p.add_argument("--plot", type=Path, required=True, help="training curves PNG")
        p.add_argument("--checkpoints", type=Path, required=True, help="Trainer checkpoints (not a DVC output)")
        p.add_argument("--resume", action="store_true", help="continue from the last checkpoint after an interruption")

    p = add("prune", cmd_prune, "remove the least important attention heads physically")
    p.add_argument("--model", type=Path, required=True, help="distilled student folder")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--metrics", type=Path, required=True)
    p.add_argument("--importance", type=Path, required=True, help="head importance JSON")
    p.add_argument("--heatmap", type=Path, required=True, help="head importance PNG")

    p = add("export", cmd_export, "ONNX exports of a student, fp32 and dynamic int8, vocabulary trimmed per "
            "student.vocab, with their fidelity to the PyTorch student")
    p.add_argument("--model", type=Path, required=True, help="student folder (finetune's output)")
    p.add_argument("--data", type=Path, required=True, help="annotate's output folder")
    p.add_argument("--fp32", type=Path, required=True, help="folder for the fp32 ONNX export")
    p.add_argument("--int8", type=Path, required=True, help="folder for the int8 ONNX export")
    p.add_argument("--metrics", type=Path, required=True)

    def compares_models(p: argparse.ArgumentParser, verb: str) -> argparse.ArgumentParser:
        p.add_argument("--data", type=Path, required=True, help="annotate's output folder")
        p.add_argument("--model", action="append", default=[], metavar="NAME=FOLDER",
                       help=f"a student or ONNX export folder to {verb}, after the teacher from params "
                            "(repeatable); the final student is the last student folder")
        p.add_argument("--metrics", type=Path, required=True)
        return p

    p = compares_models(add("evaluate", cmd_evaluate, "seqeval strict IOB2 scores of the teacher and every model"),
                        "score")
    p.add_argument("--per-class", type=Path, required=True)
    p.add_argument("--confusion", type=Path, required=True)
    p.add_argument("--errors", type=Path, required=True)

    p = compares_models(add("bench", cmd_bench, "latency, throughput, memory and size of the teacher and every "
                            "model"), "time")
    p.add_argument("--plot", type=Path, required=True)

    p = add("gate", cmd_gate, "GO / REVIEW / NO-GO for the model gate.variant names, from the eval and "
            "bench metrics")
    p.add_argument("--eval", type=Path, required=True)
    p.add_argument("--bench", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)

    p = add("predict", cmd_predict, "tag texts with a student, an ONNX export or a teacher", needs_params=False,
            epilog="One output line per input line. A line that is not UTF-8 or not a JSON object with a string "
                   "'text' gives {\"line\": N, \"error\": ...} in its place, a warning with its number, and exit "
                   "status 1 at the end. The output file is written whole or not at all: on Ctrl-C or SIGTERM "
                   "the temp file is removed and the command exits 130 or 143.")
    p.add_argument("--model", type=Path, default=Path("models/student_final"))
    p.add_argument("--input", default="-", help=".txt, .jsonl or - for stdin")
    p.add_argument("--format", choices=("auto", "txt", "jsonl"), default="auto",
                   help="input format: auto = the file's suffix; for stdin, jsonl when the first non-blank "
                        "line is a JSON object, else txt (default: %(default)s)")
    p.add_argument("--output", default="-", help=".jsonl or - for stdout")
    p.add_argument("--batch-size", type=int, default=32)

    p = add("make-corpus", cmd_make_corpus, "regenerate the shipped sample corpus", needs_params=False)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, default=1200)
    p.add_argument("--seed", type=int, default=0)

    p = add("demo-teacher", cmd_demo_teacher, "build the small offline demo teacher", needs_params=False)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)

    p = add("report", cmd_report, "HTML page comparing the workspace and the DVC experiments, with their "
            "F1 / latency / size Pareto front", needs_params=False)
    p.add_argument("--out", type=Path, default=Path("reports/report.html"))
    p.add_argument("--exp", action="append", default=[], metavar="NAME",
                   help="keep only these rows (experiment, baseline branch or workspace; repeatable)")
    p.add_argument("--sweep", action="append", default=[], type=Path, metavar="RESULTS_JSON",
                   help="keep a sweep's points and list those that failed (sweeps/results/<grid>.json; repeatable)")

    p = add("sweep", cmd_sweep, "run every point of a grid file as a queued DVC experiment, then report "
            "the Pareto front",
            epilog="Prints each `dvc exp run --queue` line, runs them in waves so that annotate runs once and "
                   "distill once per depth (the others come from DVC's run-cache), and goes on past a failed "
                   "point. Results: sweeps/results/<grid>.json; page: reports/sweep-<grid>.html. Exit status 1 "
                   "when a point failed or was invalid. See README, Sweep.")
    p.add_argument("--grid", type=Path, required=True, help="grid file, e.g. sweeps/demo.yaml")
    p.add_argument("--jobs", "-j", type=int, help="experiments at a time (default: the grid's jobs, else the CPU "
                   "count)")
    p.add_argument("--dry-run", action="store_true", help="print the commands and the waves, queue nothing")
    p.add_argument("-S", "--set-param", action="append", default=[], metavar="KEY=VALUE",
                   help="an override for every point, after the grid's base (repeatable)")
    p.add_argument("--results", type=Path, help="results file (default: sweeps/results/<grid>.json)")
    p.add_argument("--report", type=Path, help="report page (default: reports/sweep-<grid>.html)")
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (timeout, systemd, Kubernetes) raised like Ctrl-C, so every `finally` cleans up."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        params = load_params(args.params) if args.needs_params else None
        return args.func(args, params)
    except (ParamsError, InputError) as err:
        log.error("%s", err)
        return 2
    except OSError as err:
        # Outputs and model folders the user named (the messages say which path or key to fix).
        log.error("%s", err)
        return 2
    except KeyboardInterrupt as err:
        # Temp files are gone by now (their `finally` ran); outputs are as before the command.
        log.error("interrupted")
        return 128 + (signal.SIGTERM if isinstance(err, Terminated) else signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
