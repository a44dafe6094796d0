"""The report's table: one row per revision `dvc exp show --json` lists (the workspace, each
baseline commit and its experiments), the params and metrics shown as its columns, and its HTML:
the gate's decision and figures first, the params after, the final student's details last; an
experiment still running, queued or failed marked so, its figures left blank.

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
from nerdistill.results import AGREEMENT, BENCH, CLASS_DROP, EVAL, FINAL, GATE, GOLD, PARAMS_FILE, PRUNE, \
    SUMMARY_DROP, SUMMARY_F1, SUMMARY_LATENCY_RATIO, SUMMARY_LATENCY_RATIO_INT8, SUMMARY_P50, SUMMARY_SIZE_RATIO, \
    f1_path, worst_class


@dataclass(frozen=True)
class Column:
    header: str
    source: str              # PARAMS_FILE or a metrics file, as dvc.yaml names it
    path: tuple[str, ...]
    fmt: str = "{}"
    # The value is {entity type: drop}: shown as its worst type and that drop ("ORG 2.50"), so one narrow cell
    # says which type a reviewer should look at.
    worst: bool = False


# What a reviewer reads first: the gate's decision on the variant it judged and the figures it rests on.
LEAD_COLUMNS = (
    Column("decision", GATE, ("decision",)),
    Column("F1", GATE, (SUMMARY_F1,), "{:.4f}"),
    Column("F1 drop (pts)", GATE, (SUMMARY_DROP,), "{:.2f}"),
    Column("worst class drop (pts)", GATE, (CLASS_DROP,), "{:.2f}", worst=True),
    Column("latency / teacher fp32", GATE, (SUMMARY_LATENCY_RATIO,), "{:.3f}"),
    Column("size / teacher fp32", GATE, (SUMMARY_SIZE_RATIO,), "{:.3f}"),
    Column("latency / teacher int8", GATE, (SUMMARY_LATENCY_RATIO_INT8,), "{:.3f}"),
    Column("basis", GATE, ("basis",)),
    Column("judged model", GATE, ("model",)),
)
PARAM_COLUMNS = (
    Column("student.num_layers", PARAMS_FILE, ("student", "num_layers")),
    Column("pruning.ratio", PARAMS_FILE, ("pruning", "ratio")),
    Column("pruning.ffn_ratio", PARAMS_FILE, ("pruning", "ffn_ratio")),
    Column("pruning.scope", PARAMS_FILE, ("pruning", "scope")),
    Column("train.temperature", PARAMS_FILE, ("train", "temperature")),
    Column("distill.epochs", PARAMS_FILE, ("distill", "epochs")),
)
# For a closer look: the final PyTorch student's own F1 and heads removed, the judged variant's p50.
DETAIL_COLUMNS = (
    Column("final agreement F1", EVAL, f1_path(AGREEMENT), "{:.4f}"),
    Column("final gold F1", EVAL, f1_path(GOLD), "{:.4f}"),
    Column("heads removed", PRUNE, ("heads_removed",)),
    Column("judged p50 (ms)", GATE, (SUMMARY_P50,), "{:.1f}"),
)
COLUMNS = LEAD_COLUMNS + PARAM_COLUMNS + DETAIL_COLUMNS
DECISION = LEAD_COLUMNS[0]
# An experiment's executor state (`dvc exp show`) other than success: its files are not its own results
# (a running or queued experiment shows its baseline's), so its figures are blanked and it stays off the front.
UNFINISHED = ("running", "queued", "failed")


@dataclass(frozen=True)
class Row:
    name: str
    kind: str                # "workspace", "baseline" or "experiment"
    rev: str
    created: str
    baseline: str            # name of the row it was derived from ("" for baselines)
    files: dict[str, Any]    # params/metrics file -> its parsed content
    state: str = ""          # an experiment's executor state (success, running, queued, failed); "" otherwise

    @property
    def finished(self) -> bool:
        """Whether the row's metrics are its own results (a baseline, the workspace, a succeeded experiment)."""
        return self.state not in UNFINISHED


def collect_rows(repo_dir: Path) -> list[Row]:
    """Workspace, then each baseline followed by its experiments, as `dvc exp show` orders them."""
    rows = []
    for entry in _exp_show(repo_dir):
        kind = "workspace" if entry["rev"] == "workspace" else "baseline"
        baseline = _row(entry, kind, "")
        rows.append(baseline)
        for experiment in entry.get("experiments") or []:
            state = (experiment.get("executor") or {}).get("state") or ""
            rows.extend(_row(rev, "experiment", baseline.name, state) for rev in experiment["revs"])
    return rows


def _exp_show(repo_dir: Path) -> list[dict]:
    command = [sys.executable, "-m", "dvc", "exp", "show", "--json"]
    try:
        done = subprocess.run(command, cwd=repo_dir, capture_output=True, text=True, check=True)
    except subprocess.CalledProcessError as err:
        raise InputError(f"{repo_dir}: `dvc exp show --json` failed ({err.returncode}); the report needs "
                         f"a git + DVC repository: {err.stderr.strip()[-500:]}") from None
    return json.loads(done.stdout)


def _row(entry: dict, kind: str, baseline: str, state: str = "") -> Row:
    data = entry.get("data") or {}
    files = {name: content.get("data", {}) for section in ("params", "metrics")
             for name, content in (data.get(section) or {}).items()}
    rev = entry["rev"]
    name = entry.get("name") or (rev if kind == "workspace" else rev[:7])
    return Row(name=name, kind=kind, rev="" if kind == "workspace" else rev[:7],
               created=data.get("timestamp") or "", baseline=baseline, files=files, state=state)


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
    """The formatted value of `column` in `row`, or "" where that revision lacks it or has no results of its
    own yet (its params are shown all the same)."""
    if not row.finished and column.source != PARAMS_FILE:
        return ""
    tree = row.files.get(column.source, {})
    final = _final_name(row)
    for key in column.path:
        if not isinstance(tree, dict):
            return ""
        tree = tree.get(final if key == FINAL else key)
    if column.worst and isinstance(tree, dict) and tree:
        name = worst_class(tree)
        return f"{name} {column.fmt.format(tree[name])}"
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
    """The rows as an HTML table, decision and figures first, params after; values an experiment changed
    from its baseline have the class "changed", an unfinished experiment's row its state."""
    baselines = {row.name: row for row in rows if row.kind != "experiment"}
    # Dotted headers may break after a dot: narrow columns keep the table within a laptop screen.
    head = "".join(f"<th>{html.escape(header).replace('.', '.<wbr>')}</th>"
                   for header in ("experiment", "state", *(column.header for column in COLUMNS)))
    body = []
    for row in rows:
        base = baselines.get(row.baseline)
        title = " ".join(part for part in (row.rev, row.created) if part)
        cells = [f'<td class="name" title="{html.escape(title)}">{html.escape(row.name)}</td>',
                 f'<td class="state">{html.escape(row.state if row.state != "success" else "")}</td>']
        for column in COLUMNS:
            value = cell(row, column)
            classes = [value] if column is DECISION and value else []
            if base is not None and row.finished and value != cell(base, column):
                classes.append("changed")
            attr = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{attr}>{html.escape(value)}</td>")
        state = f" {row.state}" if not row.finished else ""
        body.append(f'<tr class="{row.kind}{state}">{"".join(cells)}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(body) + "\n</tbody></table>"
