"""Running a sweep's points as queued DVC experiments, in waves, and recording how each one ended.

`dvc exp run --queue` stages a point; `dvc queue start -j N` runs the queue N at a time, each
experiment in a scratch copy of the repository sharing its DVC cache and run-cache. A wave is
queued once the previous one is done, so a shared stage (annotate, distill at one depth) runs in
one point and the others restore its outputs from the run-cache ("Stage 'annotate' is cached -
skipping run") instead of running it again, side by side (`sweep.waves`). Progress comes from
`dvc queue status`, a failed point's reason from `dvc queue logs`. A failed point does not stop
the sweep; the results file (`sweep.RESULTS_DIR`) records every point, rewritten after each wave.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Hashable

from nerdistill import sweep, tracking
from nerdistill.io import InputError, write_json
from nerdistill.params import Params
from nerdistill.params_reader import parse_override, select, stage_param_keys
from nerdistill.report import write_report
from nerdistill.teacher import teacher_config

log = logging.getLogger(__name__)

SHARED_STAGES = ("annotate", "distill")  # the stages points share outputs of, in pipeline order
POLL_S = 15.0  # each poll is a `dvc queue status` process: cheap, not free
IDLE_POLLS = 3  # polls with no worker alive and points still queued before starting workers again
DONE = {"Success": sweep.SUCCESS, "Failed": sweep.FAILED}  # `dvc queue status` -> results file


def plan(grid_path: Path, params: Params, extra: list[str], root: Path
         ) -> tuple[sweep.Grid, list[sweep.Point], list[list[sweep.Point]]]:
    """The grid, every point (valid or with its error) and the waves of the valid ones."""
    grid = sweep.load_grid(grid_path)
    overrides = dict(parse_override(text) for text in extra)
    sweep.check_keys(grid, params, overrides)
    points = sweep.plan(grid, params, overrides, lambda name: teacher_config(name).num_hidden_layers, root)
    levels = [_signature(stage_keys) for stage_keys in _cumulative_keys(root / "dvc.yaml")]
    return grid, points, sweep.waves([point for point in points if not point.error], levels)


def _cumulative_keys(dvc_yaml: Path) -> list[tuple[str, ...]]:
    keys: list[str] = []
    out = []
    for stage in SHARED_STAGES:
        keys += stage_param_keys(dvc_yaml, stage)
        out.append(tuple(keys))
    return out


def _signature(keys: tuple[str, ...]) -> Callable[[sweep.Point], Hashable]:
    return lambda point: json.dumps(select(point.params, keys), sort_keys=True, default=str)


def run_sweep(grid_path: Path, params: Params, extra: list[str], root: Path, jobs: int | None,
              results_path: Path, dry_run: bool = False) -> dict[str, Any]:
    """Queue and run every valid point, wave by wave; the results record (also written to
    `results_path`, except on a dry run)."""
    if jobs is not None and jobs < 1:
        raise InputError(f"--jobs {jobs}: expected an integer >= 1")
    grid, points, planned = plan(grid_path, params, extra, root)
    jobs = jobs or grid.jobs or os.cpu_count() or 1
    wave_of = {point.name: number for number, wave in enumerate(planned, 1) for point in wave}
    for point in points:
        print(f"# {point.name}: not queued, {point.error}" if point.error else shlex.join(point.argv()), flush=True)
    log.info("sweep %s: %d points in %d waves (%s), %d invalid, up to %d at a time", grid.path, len(points),
             len(planned), " | ".join(", ".join(p.name for p in wave) for wave in planned),
             sum(bool(p.error) for p in points), jobs)
    outcome = {point.name: (sweep.INVALID if point.error else sweep.NOT_RUN, point.error) for point in points}

    def record() -> dict[str, Any]:
        return {"grid": str(grid.path), "baseline": tracking.git_commit(), "jobs": jobs,
                "points": [sweep.point_record(p, wave_of.get(p.name), *outcome[p.name]) for p in points]}

    if dry_run:
        return record()
    env = _env(grid.name)
    _check_names_free(root, env, [point.name for wave in planned for point in wave])
    try:
        for number, wave in enumerate(planned, 1):
            outcome.update(_run_wave(root, env, wave, min(jobs, len(wave)), f"wave {number}/{len(planned)}"))
            write_json(results_path, record())
    except KeyboardInterrupt:
        write_json(results_path, record())
        log.error("sweep interrupted: experiments already queued keep running (`dvc queue status`; stop them "
                  "with `dvc queue kill NAME`); %s records the points done", results_path)
        raise
    results = record()
    write_json(results_path, results)
    for point in results["points"]:
        log.info("%-24s %-8s %s", point["name"], point["status"], point["reason"])
    return results


def _env(sweep_name: str) -> dict[str, str]:
    """The environment of DVC and of the queue workers it spawns: `dvc` and `nerdistill` from this
    interpreter's folder, the sweep's tag. The stages find this checkout's MLflow store themselves
    (`tracking.tracking_uri`, from the DVC_ROOT that DVC hands them)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           tracking.SWEEP_ENV: sweep_name}
    env.pop("DVC_EXP_NAME", None)
    return env


def _dvc(root: Path, env: dict[str, str], *args: str) -> str:
    """DVC's stdout. Output goes through a file, not a pipe: the workers `dvc queue start` spawns
    inherit its descriptors, and a pipe would stay open (and this call wait) until they exit."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        code = subprocess.run(["dvc", *args], cwd=root, env=env, stdout=out, stderr=err).returncode
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if code:
        raise InputError(f"`dvc {' '.join(args)}` failed ({code}) in {root}: {(stderr or stdout).strip()[-800:]}")
    return stdout


def _check_names_free(root: Path, env: dict[str, str], names: list[str]) -> None:
    existing = set(_dvc(root, env, "exp", "ls", "--name-only").split())
    taken = [name for name in names if name in existing]
    if taken:
        raise InputError(f"experiments {', '.join(taken)} already exist on this commit; remove them "
                         f"(dvc exp remove {' '.join(taken)}) to run them again, or commit first")


def _run_wave(root: Path, env: dict[str, str], wave: list[sweep.Point], jobs: int, title: str
              ) -> dict[str, tuple[str, str]]:
    before = set(parse_status(_dvc(root, env, "queue", "status"))[0])
    for point in wave:
        _dvc(root, env, *point.argv()[1:])
    _dvc(root, env, "queue", "start", "-j", str(jobs))
    names = {point.name for point in wave}
    started, shown, idle = time.monotonic(), None, 0
    while True:
        tasks, workers = parse_status(_dvc(root, env, "queue", "status"))
        mine = {name: (task, status) for task, (name, status) in tasks.items() if task not in before and name in names}
        states = {name: mine.get(name, ("", "Queued"))[1] for name in sorted(names)}
        if states != shown:
            minutes, seconds = divmod(int(time.monotonic() - started), 60)
            log.info("%s, %d:%02d: %s", title, minutes, seconds, ", ".join(f"{n} {s}" for n, s in states.items()))
            shown = states
        if all(status in DONE for status in states.values()):
            break
        idle = idle + 1 if workers == 0 else 0
        if idle >= IDLE_POLLS:  # a worker that died leaves its tasks queued forever
            log.warning("%s: no queue worker alive, starting %d again", title, jobs)
            _dvc(root, env, "queue", "start", "-j", str(jobs))
            idle = 0
        time.sleep(POLL_S)
    return {name: (DONE[status], _reason(root, env, mine[name][0]) if status == "Failed" else "")
            for name, status in states.items()}


def _reason(root: Path, env: dict[str, str], task: str) -> str:
    try:
        return failure_reason(_dvc(root, env, "queue", "logs", task))
    except InputError as err:  # a log DVC cannot show does not stop the sweep
        return f"no reason: {err}"


def parse_status(text: str) -> tuple[dict[str, tuple[str, str]], int]:
    """`dvc queue status` -> ({task id: (name, status)}, workers alive). A table under the header
    `Task  Name  Created  Status`, columns aligned to it (a name may be empty, a date holds spaces),
    then `Worker status: A active, I idle`."""
    tasks: dict[str, tuple[str, str]] = {}
    columns: dict[str, int] = {}
    for line in text.splitlines():
        if re.match(r"Task\s+Name\s+Created\s+Status", line):
            columns = {title: line.index(title) for title in ("Name", "Created", "Status")}
        elif columns and re.match(r"[0-9a-f]{7}\b", line):
            tasks[line[:7]] = (line[columns["Name"]:columns["Created"]].strip(), line[columns["Status"]:].strip())
    counts = re.search(r"Worker status: (\d+) active, (\d+) idle", text)
    return tasks, (int(counts.group(1)) + int(counts.group(2))) if counts else 0


def failure_reason(log_text: str) -> str:
    """Why a queued experiment failed, from `dvc queue logs`: the stage DVC names and the last error
    the command printed before (a nerdistill ERROR line, or the exception ending a traceback)."""
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    failed = next((i for i, line in enumerate(lines) if "failed to reproduce" in line), len(lines))
    errors = [line for line in lines[:failed] if re.search(r"\bERROR\b|^[\w.]*(Error|Exception)\b", line)]
    stage = re.search(r"failed to reproduce '([^']+)'", lines[failed]) if failed < len(lines) else None
    reason = errors[-1] if errors else (lines[failed] if failed < len(lines) else (lines[-1] if lines else "no log"))
    reason = re.sub(r"^\S*\s*ERROR\s+nerdistill[\w.]*:\s*", "", reason)
    return f"{stage.group(1)}: {reason}" if stage and errors else reason


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("Prints each `dvc exp run --queue` line, runs them in waves so that annotate runs once and "
                     "distill once per depth (the others come from DVC's run-cache), and goes on past a failed point. "
                     "Results: sweeps/results/<grid>.json; page: reports/sweep-<grid>.html. Exit status 1 when a "
                     "point failed or was invalid. See README, Sweep.")
    parser.add_argument("--grid", type=Path, required=True, help="grid file, e.g. sweeps/demo.yaml")
    parser.add_argument("--jobs", "-j", type=int, help="experiments at a time (default: the grid's jobs, else the "
                        "CPU count)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and the waves, queue nothing")
    parser.add_argument("-S", "--set-param", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for every point, after the grid's base (repeatable)")
    parser.add_argument("--results", type=Path, help="results file (default: sweeps/results/<grid>.json)")
    parser.add_argument("--report", type=Path, help="report page (default: reports/sweep-<grid>.html)")


def main(args: argparse.Namespace, params: Params) -> int:
    results_path = args.results or sweep.RESULTS_DIR / f"{args.grid.stem}.json"
    results = run_sweep(args.grid, params, args.set_param, Path.cwd(), args.jobs, results_path, args.dry_run)
    if args.dry_run:
        return 1 if any(point["status"] == sweep.INVALID for point in results["points"]) else 0
    write_report(Path.cwd(), args.report or Path("reports") / f"sweep-{args.grid.stem}.html", sweeps=(results_path,))
    return 0 if all(point["status"] == sweep.SUCCESS for point in results["points"]) else 1
