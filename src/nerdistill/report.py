"""One self-contained HTML page comparing the workspace, its baseline and every DVC experiment.

The rows come from `dvc exp show --json` (the nested params and metrics of each revision, which
`dvc.api.exp_show` flattens into ambiguous column names); the workspace's PNG plots are inlined
as base64 images, so the page opens offline and can be mailed as one file. The rows' F1 / latency /
size Pareto front (`front`) is drawn to a PNG beside the page and inlined too; a sweep's results
file adds its points that failed, with why.
"""
from __future__ import annotations

import base64
import html
import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nerdistill import front as pareto
from nerdistill.io import InputError, write_text
from nerdistill.plots import plot_front
from nerdistill.results import AGREEMENT, FINAL, FP32, GOLD, INT8, drop_path, f1_path, gate_summary, ratio_path, \
    variant_path
from nerdistill.sweep import SUCCESS, read_results

log = logging.getLogger(__name__)

PARAMS_FILE = "params.yaml"
EVAL, BENCH, GATE, PRUNE = "metrics/eval.json", "metrics/bench.json", "metrics/gate.json", "metrics/prune.json"


@dataclass(frozen=True)
class Column:
    header: str
    source: str              # PARAMS_FILE or a metrics file, as dvc.yaml names it
    path: tuple[str, ...]
    fmt: str = "{}"


PARAM_COLUMNS = (
    Column("pruning.ratio", PARAMS_FILE, ("pruning", "ratio")),
    Column("pruning.scope", PARAMS_FILE, ("pruning", "scope")),
    Column("distill.temperature", PARAMS_FILE, ("distill", "temperature")),
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


def write_report(repo_dir: str | Path, out_path: str | Path, experiments: list[str] | None = None,
                 sweeps: tuple[Path, ...] = ()) -> Path:
    """Write the comparison page for `repo_dir` to `out_path` and return the path.

    `experiments`: row names to keep (experiment names, "workspace", a baseline's branch name);
    `sweeps`: sweep results files, whose succeeded points are kept too and whose failed points
    are listed; neither keeps every row `dvc exp show` lists. The front's PNG goes beside the page."""
    repo_dir, out_path = Path(repo_dir), Path(out_path)
    results = [read_results(path) for path in sweeps]
    rows = collect_rows(repo_dir)
    rows = _select(rows, _names(rows, experiments, results))
    front = pareto.build([(row.name, row.files) for row in _distinct(rows)])
    front_png = out_path.with_name(f"{out_path.stem}_front.png")
    if front is not None:
        plot_front(front.points, front.fronts, front.teacher, front.basis, pareto.COSTS, front_png)
    page = render(rows, _workspace_images(repo_dir), _workspace_gate(repo_dir),
                  front_section(front, front_png if front is not None else None, results))
    write_text(out_path, page)
    log.info("report: %d rows, written to %s", len(rows), out_path)
    return out_path


def _names(rows: list[Row], experiments: list[str] | None, results: list[dict]) -> list[str] | None:
    """The rows to keep: those named, and each sweep's points that succeeded and are still listed."""
    if experiments is None and not results:
        return None
    listed = {row.name for row in rows}
    swept = [p["name"] for result in results for p in result["points"] if p["status"] == SUCCESS]
    gone = [name for name in swept if name not in listed]
    if gone:
        log.warning("sweep points %s are not in `dvc exp show` (removed, or another commit's)", gone)
    return list(experiments or []) + [name for name in swept if name in listed]


def _distinct(rows: list[Row]) -> list[Row]:
    """The rows as front points: the workspace only when it differs from every other row."""
    return [row for row in rows if row.kind != "workspace" or all(other.files != row.files
                                                                   for other in rows if other is not row)]


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


def _select(rows: list[Row], names: list[str] | None) -> list[Row]:
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


def _workspace_images(repo_dir: Path) -> list[tuple[str, str]]:
    """(file name, base64 PNG) for each plots/*.png of the workspace."""
    return [(png.name, base64.b64encode(png.read_bytes()).decode("ascii"))
            for png in sorted((repo_dir / "plots").glob("*.png"))]


def _workspace_gate(repo_dir: Path) -> str:
    path = repo_dir / GATE
    if not path.exists():
        return ""
    try:
        return gate_summary(json.loads(path.read_text(encoding="utf-8")))
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{path}: not a gate result ({err}); re-run `dvc repro gate`") from None


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; white-space: nowrap; }
th { background: #f2f2f2; } td.name { text-align: left; font-weight: bold; }
td.reason { text-align: left; white-space: normal; max-width: 60em; }
tr.workspace td { background: #fffbe6; } tr.baseline td { background: #eef5ff; }
td.changed { color: #b00; font-weight: bold; }
td.GO { background: #d9f2d9 !important; } td.REVIEW { background: #fff2cc !important; }
td.NO-GO { background: #f8d0d0 !important; }
figure { display: inline-block; margin: 1em; vertical-align: top; } img { max-width: 900px; }
pre { background: #f6f6f6; padding: 1em; }
"""


def front_section(front: pareto.Front | None, png: Path | None, sweeps: list[dict]) -> str:
    """The front's figure and tables, and the sweep points that failed; "" when there is neither."""
    parts = []
    if front is not None and png is not None:
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        parts.append(f"<h2>Pareto front: F1 ({front.basis}) against latency and size</h2>\n"
                     f"<p>One point per experiment: the F1, CPU batch-1 p50 per document and bytes on disk of the "
                     f"variant the gate judged. Blue: no other experiment has a higher F1 at a lower cost (the "
                     f"front); grey: dominated; red: the teacher in fp32 and int8 (median over the experiments' "
                     f"benches, at the teacher's F1). The last column is the extra cost of each further "
                     f"{pareto.STEP_POINTS:g} F1 point from the previous front point.</p>\n"
                     f'<figure><img alt="{html.escape(png.name)}" src="data:image/png;base64,{data}"></figure>')
        parts.append(_recommendation(front))
        for key, (title, unit) in pareto.COSTS.items():
            parts.append(_front_table(front, key, title, unit))
        if front.left_out:
            items = "".join(f"<li>{html.escape(reason)}</li>" for reason in front.left_out)
            parts.append(f"<p>Not on the front:</p><ul>{items}</ul>")
    failed = [(result["grid"], point) for result in sweeps for point in result["points"]
              if point["status"] != SUCCESS]
    if failed:
        body = "".join(f"<tr><td>{html.escape(grid)}</td><td class=\"name\">{html.escape(point['name'])}</td>"
                       f"<td>{html.escape(json.dumps(point['values']))}</td><td>{html.escape(point['status'])}</td>"
                       f"<td class=\"reason\">{html.escape(point['reason'])}</td></tr>" for grid, point in failed)
        parts.append("<h2>Sweep points that failed</h2>\n<table><thead><tr><th>grid</th><th>experiment</th>"
                     f"<th>values</th><th>status</th><th>reason</th></tr></thead><tbody>{body}</tbody></table>")
    return "\n".join(parts)


def _recommendation(front: pareto.Front) -> str:
    teacher = pareto.teacher_fp32(front)
    if teacher is None or front.max_drop_points is None:
        return ""
    points = "point" if front.max_drop_points == 1 else "points"
    bound = f"within {front.max_drop_points:g} F1 {points} ({front.basis}) of the teacher in fp32 ({teacher.f1:.4f})"
    pick = pareto.recommend(front)
    if pick is None:
        best = max(front.points, key=lambda point: point.f1)
        return (f"<p><b>No experiment is {html.escape(bound)}</b>: the best, {html.escape(best.name)}, is "
                f"{100 * (teacher.f1 - best.f1):.2f} points below it.</p>")
    ratios = ", ".join(
        f"{pareto.quantity(pick.costs[key], unit)} {html.escape(title)} "
        f"({pick.ratios[key]:.2f}&times; the teacher's fp32 in its bench)"
        for key, (title, unit) in pareto.COSTS.items())
    return (f"<p><b>Recommended: {html.escape(pick.name)}</b> ({html.escape(pick.label)}), the cheapest on CPU p50 "
            f"{html.escape(bound)}: F1 {pick.f1:.4f} ({100 * (pick.f1 - teacher.f1):+.2f} points), {ratios}.</p>")


def _front_table(front: pareto.Front, key: str, title: str, unit: str) -> str:
    line = front.fronts[key]
    steps = pareto.step_costs(line, lambda p: p.f1, lambda p: p.costs[key])
    body = "".join(f"<tr><td class=\"name\">{html.escape(p.name)}</td><td>{html.escape(p.label)}</td>"
                   f"<td>{p.f1:.4f}</td><td>{pareto.quantity(p.costs[key], unit)}</td>"
                   f"<td>{'' if step is None else '+' + pareto.quantity(step, unit)}</td></tr>"
                   for p, step in zip(line, steps))
    return (f"<h3>Front on {html.escape(title)}</h3>\n<table><thead><tr><th>experiment</th><th>params</th>"
            f"<th>F1</th><th>{html.escape(title)}</th><th>per further {pareto.STEP_POINTS:g} F1 point</th></tr>"
            f"</thead><tbody>{body}</tbody></table>")


def render(rows: list[Row], images: list[tuple[str, str]], gate_summary: str, front: str = "") -> str:
    """The whole page; values an experiment changed from its baseline are shown in red."""
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
    figures = "".join(f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
                      f"<figcaption>{html.escape(name)}</figcaption></figure>" for name, data in images)
    gate = f"<h2>Gate (workspace)</h2><pre>{html.escape(gate_summary)}</pre>" if gate_summary else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>nerdistill experiments</title>'
            f"<style>{STYLE}</style></head><body>\n<h1>nerdistill experiments</h1>\n"
            f"<p>Rows from <code>dvc exp show</code>: the workspace, each baseline commit and its experiments. "
            f"Red: differs from the baseline. F1 of the final student; latencies are batch-1 p50 on the bench "
            f"document; ratios are final student / teacher. The gate columns are those of the model variant "
            f"the gate judged (gate.variant).</p>\n"
            f"<table><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(body) + "\n</tbody></table>\n"
            f"{front}\n{gate}<h2>Plots (workspace)</h2>\n{figures}\n</body></html>\n")
