"""A sweep: a grid file (`sweeps/*.yaml`) expanded into points, one DVC experiment each.

The grid file is data:

    base:                 # -S overrides applied to every point
      distill.epochs: 2
    grid:                 # every combination of these values is a point (cartesian product)
      student.num_layers: [2, 3]
      pruning.ratio: [0.25, 0.5]
    jobs: 2               # optional: experiments run at a time (default: the CPU count)

Keys are params.yaml keys, dotted as `dvc exp run -S` takes them. A point's depth decides the
teacher layers its student copies and the layer map of the hidden loss (`derive_layers`), so
those keys are never typed. Queued experiments run in a scratch copy holding only the files git
tracks, so a relative folder in a path key is made absolute against the repository root.
The teacher's depth comes in as a function (`dvc_queue` reads its config.json), and
`dvc_queue` runs the points.
"""
from __future__ import annotations

import difflib
import itertools
import json
import re
import shlex
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Sequence

import yaml

from nerdistill.io import InputError
from nerdistill.params import Params, ParamsError
from nerdistill.params_reader import flat, params_from_dict

FILE_KEYS = ("base", "grid", "jobs")
NUM_LAYERS = "student.num_layers"
DERIVED_KEYS = ("student.teacher_layers", "train.layer_map.teacher", "train.layer_map.student")
PATH_KEYS = ("teacher.model_name", "evaluate.gold_path")
RESULTS_DIR = Path("sweeps/results")


def _percent(value: Any) -> str:
    return f"{100 * float(value):g}"


# How a swept key reads in an experiment name, in this order (L3-h25-f50-corpus); a key missing
# here reads as its last segment and value (temperature3.0). A new knob is one line.
NAME_PARTS: dict[str, Callable[[Any], str]] = {
    NUM_LAYERS: lambda value: f"L{value}",
    "pruning.ratio": lambda value: f"h{_percent(value)}",
    "pruning.ffn_ratio": lambda value: f"f{_percent(value)}",
    "student.vocab": str,
}


class GridError(InputError):
    """A grid file the sweep cannot use; the message names the file and the key."""


@dataclass(frozen=True)
class Grid:
    path: Path
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    jobs: int | None = None

    @property
    def name(self) -> str:
        return self.path.stem


@dataclass(frozen=True)
class Point:
    name: str
    values: dict[str, Any]                 # this point's grid values
    overrides: dict[str, Any]              # every -S: base, extra, grid values, derived layers, absolute paths
    params: Params | None = field(default=None, compare=False)
    error: str = ""                        # why the pipeline would refuse these params; "" when valid

    def argv(self) -> list[str]:
        """The `dvc exp run --queue` command line that queues this point."""
        sets = [arg for key, value in self.overrides.items() for arg in ("-S", f"{key}={format_value(value)}")]
        return ["dvc", "exp", "run", "--queue", "-n", self.name, *sets]


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file's shape; the param keys are checked by `check_keys`."""
    path = Path(path)
    if not path.is_file():
        raise GridError(f"{path}: grid file not found; see sweeps/demo.yaml for the format")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise GridError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise GridError(f"{path}: expected a mapping with {', '.join(FILE_KEYS)}")
    unknown = sorted(set(raw) - set(FILE_KEYS))
    if unknown:
        raise GridError(f"{path}: unknown key {unknown[0]!r}; allowed keys: {', '.join(FILE_KEYS)}")
    base, grid, jobs = raw.get("base") or {}, raw.get("grid"), raw.get("jobs")
    if not isinstance(base, dict):
        raise GridError(f"{path}: base must map param keys to values, e.g. distill.epochs: 2")
    if not isinstance(grid, dict) or not grid:
        raise GridError(f"{path}: grid must map at least one param key to a list of values, "
                        "e.g. pruning.ratio: [0.25, 0.5]")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise GridError(f"{path}: grid.{key} = {values!r}; expected a non-empty list of values")
        if len(set(map(repr, values))) != len(values):
            raise GridError(f"{path}: grid.{key} = {values!r} repeats a value")
        if key in base:
            raise GridError(f"{path}: {key} is in both base and grid; keep it in one")
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise GridError(f"{path}: jobs = {jobs!r}; expected an integer >= 1, or leave it out for the CPU count")
    return Grid(path=path, base=dict(base), grid={str(k): list(v) for k, v in grid.items()}, jobs=jobs)


def check_keys(grid: Grid, params: Params, extra: dict[str, Any]) -> None:
    """Every key names a params.yaml value, none is a derived one, and the command line's -S
    overrides do not fight the grid."""
    known = flat(params)
    for where, keys in (("base", grid.base), ("grid", grid.grid), ("-S", extra)):
        for key in keys:
            if key in DERIVED_KEYS:
                raise GridError(f"{grid.path}: {where} sets {key}, which the sweep derives from {NUM_LAYERS} and "
                                "the teacher's depth (README, Sweep); remove it")
            if key not in known:
                close = difflib.get_close_matches(key, known, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else "; keys are dotted params.yaml keys"
                raise GridError(f"{grid.path}: {where} key {key!r} is not a params.yaml value{hint}")
    clash = sorted(set(extra) & set(grid.grid))
    if clash:
        raise GridError(f"{grid.path}: -S {clash[0]} overrides a key the grid sweeps; drop one of them")


def expand(grid: Grid) -> list[dict[str, Any]]:
    """The grid's points in the file's order, the last key varying fastest."""
    keys = list(grid.grid)
    return [dict(zip(keys, combination)) for combination in itertools.product(*grid.grid.values())]


def point_name(values: dict[str, Any]) -> str:
    """A short experiment name from a point's grid values, e.g. L3-h25-f50-corpus."""
    known = [NAME_PARTS[key](values[key]) for key in NAME_PARTS if key in values]
    other = [f"{key.rsplit('.', 1)[-1]}{format_value(value)}" for key, value in values.items() if key not in NAME_PARTS]
    # Git ref names (DVC stores experiments as refs) refuse spaces, colons, brackets and the like.
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(known + other))


def derive_layers(num_layers: int, depth: int) -> dict[str, list[int]]:
    """The teacher layers a student of `num_layers` copies, evenly spaced over a teacher of `depth`
    layers from 1 to `depth` both included (student layer i of n copies teacher layer
    1 + floor((i - 1)(depth - 1) / (n - 1)); n = 1 copies the last), and the layer map pairing
    every student layer from 2 up with the teacher layer it was copied from. Layer 1, a copy of
    the teacher's first, gets no hidden loss; a one-layer student maps its only layer."""
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or not 1 <= num_layers <= depth:
        raise ParamsError(f"{NUM_LAYERS} = {num_layers!r}: the teacher has {depth} layers, so a student "
                          f"copies an integer 1 to {depth} of them")
    if num_layers == 1:
        copied = [depth]
    else:
        copied = [1 + (i * (depth - 1)) // (num_layers - 1) for i in range(num_layers)]
    mapped = range(2, num_layers + 1) if num_layers > 1 else range(1, 2)
    return {"student.teacher_layers": copied,
            "train.layer_map.teacher": [copied[j - 1] for j in mapped],
            "train.layer_map.student": list(mapped)}


def plan(grid: Grid, params: Params, extra: dict[str, Any], teacher_depth: Callable[[str], int],
         root: Path) -> list[Point]:
    """Every point with its full -S overrides and, when the pipeline would refuse them, why."""
    points = [_point(grid, params, extra, values, teacher_depth, root) for values in expand(grid)]
    names = [point.name for point in points]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise GridError(f"{grid.path}: two points are both named {repeated[0]}; values that differ below the "
                        "name's precision (0.251 and 0.25 are both h25) need distinct grid values")
    return points


def _point(grid: Grid, params: Params, extra: dict[str, Any], values: dict[str, Any],
           teacher_depth: Callable[[str], int], root: Path) -> Point:
    overrides = {**grid.base, **extra, **values}
    tree = apply_overrides(dataclasses.asdict(params), overrides)
    for key in PATH_KEYS:
        value = _get(tree, key)
        # A relative path that names nothing here stays as written (a hub id, for the teacher).
        if value and not Path(value).is_absolute() and (root / value).exists():
            overrides[key] = str((root / value).resolve())
    tree = apply_overrides(tree, overrides)
    name = point_name(values)
    try:
        overrides.update(derive_layers(_get(tree, NUM_LAYERS), teacher_depth(_get(tree, "teacher.model_name"))))
        return Point(name=name, values=values, overrides=overrides,
                     params=params_from_dict(apply_overrides(tree, overrides)))
    except ParamsError as err:
        return Point(name=name, values=values, overrides=overrides, error=str(err))


def apply_overrides(tree: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of the nested params `tree` with each dotted key set, as `dvc exp run -S` sets it."""
    out = _copy(tree)
    for key, value in overrides.items():
        *sections, leaf = key.split(".")
        node = out
        for section in sections:
            node = node[section]
        node[leaf] = value
    return out


def _copy(tree: Any) -> Any:
    return {key: _copy(value) for key, value in tree.items()} if isinstance(tree, dict) else tree


def _get(tree: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        tree = tree[part]
    return tree


def format_value(value: Any) -> str:
    """A value as `-S key=value` writes it (YAML flow style: true, 0.25, [1,2,4])."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(item) for item in value) + "]"
    return str(value)


def waves(points: Sequence[Point], levels: Iterable[Callable[[Point], Hashable]]) -> list[list[Point]]:
    """Points in waves so each shared stage runs once per distinct input, the other points finding
    its outputs in DVC's run-cache: for each level (the params of annotate, then of annotate and
    distill), one point per value not yet covered; then the rest. With one annotate input and two
    depths: [first point], [one point of the other depth], [the rest]."""
    remaining, out = list(points), []
    for signature in levels:
        covered = {signature(point) for wave in out for point in wave}
        wave = []
        for point in remaining:
            if signature(point) not in covered:
                covered.add(signature(point))
                wave.append(point)
        remaining = [point for point in remaining if point not in wave]
        out.append(wave)
    out.append(remaining)
    return [wave for wave in out if wave]


# The sweep's results file (RESULTS_DIR/<grid>.json), written by dvc_queue and read by report:
# {"grid", "baseline", "points": [{"name", "values", "wave", "status", "reason", "command"}]}.
SUCCESS, FAILED, INVALID, NOT_RUN = "success", "failed", "invalid", "not run"


def point_record(point: Point, wave: int | None, status: str, reason: str = "") -> dict[str, Any]:
    return {"name": point.name, "values": point.values, "wave": wave, "status": status,
            "reason": reason or point.error, "command": shlex.join(point.argv())}


def read_results(path: str | Path) -> dict[str, Any]:
    """A sweep's results file, checked enough for the report to list its points."""
    path = Path(path)
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        points = results["points"]
        if not all(isinstance(p, dict) and {"name", "values", "status", "reason"} <= set(p) for p in points):
            raise ValueError("a point lacks name, values, status or reason")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise GridError(f"{path}: not a sweep results file ({err}); `nerdistill sweep` writes them") from None
    return results
