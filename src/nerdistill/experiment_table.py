"""The report's table: one row per revision `dvc exp show --json` lists (the workspace, each
baseline commit and its experiments), the params and metrics shown as its columns, and its HTML.

The rows are read from `dvc exp show --json`, which keeps each revision's params and metrics
nested by file; `dvc.api.exp_show` flattens them into ambiguous column names.
"""
from __future__ import annotations

import html
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nerdistill.io import InputError
from nerdistill.results import AGREEMENT, BENCH, EVAL, FINAL, FP32, GATE, GOLD, INT8, PARAMS_FILE, PRUNE, drop_path, \
    f1_path, ratio_path, variant_path


@dataclass(frozen=True)
class Column:
    header: str
    source: str              # PARAMS_FILE or a metrics file, as dvc.yaml names it
    path: tuple[str, ...]
    fmt: str = "{}"


PARAM_COLUMNS = (
    Column("pruning.ratio", PARAMS_FILE, ("pruning", "ratio")),
    Column("pruning.scope", PARAMS_FILE, ("pruning", "scope")),
    Column("train.temperature", PARAMS_FILE, ("train", "temperature")),
    Column("distill.epochs", PARAMS_FILE, ("distill", "epochs")),
    Column("distill.learning_rate", PARAMS_FILE, ("distill", "learning_rate")),
    Column("student.num_layers", PARAMS_FILE, ("student", "num_layers")),
    Column("finetune.epochs", PARAMS_FILE, ("finetune", "epochs")),
)
METRIC_COLUMNS = (
    Column("agreement F1", EVAL, f1_path(AGREEMENT), "{:.4f}"),
    Column("gold F1", EVAL, f1_path(GOLD), "{:.4f}"),
    Column("F1 drop (pts, agreement)", EVAL, drop_path(AGREEMENT), "{:.2f}"),
    Column("F1 drop (pts, gold)", EVAL, drop_path(GOLD), "{:.2f}"),
    Column("heads removed", PRUNE, ("heads_removed",)),
    Column("p50 fp32 (ms)", BENCH, variant_path(FP32, "doc_p50_ms"), "{:.1f}"),
    Column("p50 int8 (ms)", BENCH, variant_path(INT8, "doc_p50_ms"), "{:.1f}"),
    Column("latency ratio fp32", BENCH, ratio_path("doc_p50_ms"), "{:.3f}"),
    Column("latency ratio int8", BENCH, ratio_path("int8_doc_p50_ms"), "{:.3f}"),
    Column("params ratio", BENCH, ratio_path("parameters"), "{:.3f}"),
    Column("bytes ratio", BENCH, ratio_path("disk_bytes"), "{:.3f}"),
    Column("gate", GATE, ("decision",)),
    Column("gate model", GATE, ("model",)),
    Column("gate variant", GATE, ("variant",)),
    Column("gate F1", GATE, ("f1",), "{:.4f}"),
    Column("gate latency / teacher fp32", GATE, ("latency_ratio_vs_teacher_fp32",), "{:.3f}"),
    Column("gate size / teacher fp32", GATE, ("size_ratio_vs_teacher_fp32",), "{:.3f}"),
)


@dataclass(frozen=True)
class Row:
    name: str
    kind: str                # "workspace", "baseline" or "experiment"
    rev: str
    created: str
    baseline: str            # name of the row it was derived from ("" for baselines)
    files: dict[str, Any]    # params/metrics file -> its parsed content


def collect_rows(repo_dir: Path) -> list[Row]:
    """Workspace, then each baseline followed by its experiments, as `dvc exp show` orders them."""
    rows = []
    for entry in _exp_show(repo_dir):
        kind = "workspace" if entry["rev"] == "workspace" else "baseline"
        baseline = _row(entry, kind, "")
        rows.append(baseline)
        for experiment in entry.get("experiments") or []:
            rows.extend(_row(rev, "experiment", baseline.name) for rev in experiment["revs"])
    return rows


def _exp_show(repo_dir: Path) -> list[dict]:
    command = [sys.executable, "-m", "dvc", "exp", "show", "--json"]
    try:
        done = subprocess.run(command, cwd=repo_dir, capture_output=True, text=True, check=True)
    except subprocess.CalledProcessError as err:
        raise InputError(f"{repo_dir}: `dvc exp show --json` failed ({err.returncode}); the report needs "
                         f"a git + DVC repository: {err.stderr.strip()[-500:]}") from None
    return json.loads(done.stdout)


def _row(entry: dict, kind: str, baseline: str) -> Row:
    data = entry.get("data") or {}
    files = {name: content.get("data", {}) for section in ("params", "metrics")
             for name, content in (data.get(section) or {}).items()}
    rev = entry["rev"]
    name = entry.get("name") or (rev if kind == "workspace" else rev[:7])
    return Row(name=name, kind=kind, rev="" if kind == "workspace" else rev[:7],
               created=data.get("timestamp") or "", baseline=baseline, files=files)


def select_rows(rows: list[Row], names: list[str] | None) -> list[Row]:
    """The rows named, in table order; all of them when `names` is None."""
    if names is None:
        return rows
    known = {row.name for row in rows}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise InputError(f"experiments {unknown} not found; `dvc exp show` lists: {', '.join(sorted(known))}")
    return [row for row in rows if row.name in names]


def cell(row: Row, column: Column) -> str:
    """The formatted value of `column` in `row`, or "" where that revision lacks it."""
    tree = row.files.get(column.source, {})
    final = _final_name(row)
    for key in column.path:
        if not isinstance(tree, dict):
            return ""
        tree = tree.get(final if key == FINAL else key)
    if tree is None or isinstance(tree, (dict, list)):
        return ""
    if isinstance(tree, bool) or not isinstance(tree, (int, float)):
        return str(tree)
    return column.fmt.format(tree)


def _final_name(row: Row) -> str:
    for source in (EVAL, BENCH):
        name = row.files.get(source, {}).get("final")
        if isinstance(name, str):
            return name
    return "final"


def table_html(rows: list[Row]) -> str:
    """The rows as an HTML table; values an experiment changed from its baseline have the class "changed"."""
    baselines = {row.name: row for row in rows if row.kind != "experiment"}
    columns = PARAM_COLUMNS + METRIC_COLUMNS
    head = "".join(f"<th>{html.escape(header)}</th>"
                   for header in ("experiment", "rev", "created", *(c.header for c in columns)))
    body = []
    for row in rows:
        base = baselines.get(row.baseline)
        cells = [f'<td class="name">{html.escape(row.name)}</td>', f"<td>{html.escape(row.rev)}</td>",
                 f"<td>{html.escape(row.created)}</td>"]
        for column in columns:
            value = cell(row, column)
            classes = [value] if column.source == GATE and column.path == ("decision",) else []
            if base is not None and value != cell(base, column):
                classes.append("changed")
            attr = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{attr}>{html.escape(value)}</td>")
        body.append(f'<tr class="{row.kind}">{"".join(cells)}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(body) + "\n</tbody></table>"
