"""nerdistill: distil, prune and gate a NER transformer into a small CRF student, one command a stage.

One console script routes each command to the module owning it. A command's module owns its
arguments (`add_arguments(parser)`) and its entry (`main(args, params)`); a pipeline stage's entry runs its pure `run` inside its MLflow run (`tracking.tracked_stage`). Only the
command asked for is imported, so a stage's DVC deps are its own module's imports, not every
command's (tests/test_dvc_deps.py), and `nerdistill gate` never loads torch.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from types import ModuleType

from nerdistill.io import InputError
from nerdistill.params import ParamsError
from nerdistill.params_reader import load_params

log = logging.getLogger("nerdistill")

# name: (one-line help, whether it reads params.yaml). Each command's own options live in its module.
COMMANDS: dict[str, tuple[str, bool]] = {
    "annotate": ("teacher auto-annotates the raw corpus into train/val/test splits", True),
    "distill": ("train the CRF student from the teacher (Patient KD)", True),
    "prune": ("remove the least important attention heads and FFN neurons physically", True),
    "finetune": ("recover the pruned student with the teacher", True),
    "export": ("ONNX exports of a student, fp32 and dynamic int8, with their fidelity to the PyTorch student", True),
    "export-teacher": ("the teacher as ONNX dynamic int8: what quantising alone gives, the baseline to beat", True),
    "evaluate": ("seqeval strict IOB2 scores of the teacher and every model", True),
    "bench": ("latency, throughput, memory and size of the teacher and every model", True),
    "gate": ("GO / REVIEW / NO-GO for the model gate.variant names, from the eval and bench metrics", True),
    "predict": ("tag texts with a student, an ONNX export or a teacher", False),
    "report": ("HTML page comparing the workspace and the DVC experiments, with their Pareto front", False),
    "sweep": ("run every point of a grid file as a queued DVC experiment, then report the Pareto front", True),
    "make-corpus": ("regenerate the shipped sample corpus", False),
    "demo-teacher": ("build the small offline demo teacher", False),
}


def command_module(name: str) -> ModuleType:
    """The module owning `name`, imported only when that command runs."""
    if name == "annotate":
        from nerdistill.stages import annotate as module
    elif name == "distill":
        from nerdistill.stages import distill as module
    elif name == "prune":
        from nerdistill.stages import prune as module
    elif name == "finetune":
        from nerdistill.stages import finetune as module
    elif name == "export":
        from nerdistill.stages import export as module
    elif name == "export-teacher":
        from nerdistill.stages import export_teacher as module
    elif name == "evaluate":
        from nerdistill.stages import evaluate as module
    elif name == "bench":
        from nerdistill.stages import bench as module
    elif name == "gate":
        from nerdistill.stages import gate as module
    elif name == "predict":
        from nerdistill import streaming as module
    elif name == "report":
        from nerdistill import report as module
    elif name == "sweep":
        from nerdistill import dvc_queue as module
    elif name == "make-corpus":
        from nerdistill.demo import corpus as module
    elif name == "demo-teacher":
        from nerdistill.demo import teacher as module
    else:
        raise KeyError(name)
    return module


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command's name and help; the options of `command` alone (its module is imported for them)."""
    parser = argparse.ArgumentParser(prog="nerdistill", description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, _) in COMMANDS.items():
        # Without its options a command must not answer --help: the second parse, with them, does.
        command_parser = sub.add_parser(name, help=help_text, description=help_text, add_help=name == command)
        if name == command:
            command_module(name).add_arguments(command_parser)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (timeout, systemd, Kubernetes) raised like Ctrl-C, so every `finally` cleans up."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = build_parser().parse_known_args(argv)[0].command
    args = build_parser(command).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        params = load_params(args.params) if COMMANDS[command][1] else None
        return command_module(command).main(args, params)
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
