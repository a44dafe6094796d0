"""One self-contained HTML page comparing the workspace, its baseline and every DVC experiment.

The table of rows is `experiment_table`'s; the workspace's PNG plots are inlined as base64 images,
so the page opens offline and can be mailed as one file. The rows' F1 / latency / size Pareto front
(`front`) is drawn to a PNG beside the page and inlined too; a sweep's results file adds its points
that failed, with why.
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import logging
from pathlib import Path

from nerdistill import front as pareto
from nerdistill.experiment_table import GATE, Row, collect_rows, select_rows, table_html
from nerdistill.io import InputError, write_text
from nerdistill.plots import plot_front
from nerdistill.results import gate_summary, worst_class
from nerdistill.sweep import SUCCESS, read_results

log = logging.getLogger(__name__)


def write_report(repo_dir: str | Path, out_path: str | Path, experiments: list[str] | None = None,
                 sweeps: tuple[Path, ...] = ()) -> Path:
    """Write the comparison page for `repo_dir` to `out_path` and return the path.

    `experiments`: row names to keep (experiment names, "workspace", a baseline's branch name);
    `sweeps`: sweep results files, whose succeeded points are kept too and whose failed points
    are listed; neither keeps every row `dvc exp show` lists. The front's PNG goes beside the page."""
    repo_dir, out_path = Path(repo_dir), Path(out_path)
    results = [read_results(path) for path in sweeps]
    rows = collect_rows(repo_dir)
    rows = select_rows(rows, _names(rows, experiments, results))
    front = pareto.build([(row.name, row.files) for row in _distinct(rows)],
                         [f"{row.name}: {row.state}, no results yet" for row in rows if not row.finished])
    front_png = out_path.with_name(f"{out_path.stem}_front.png")
    if front is not None:
        plot_front(front.points, front.fronts, front.teacher, front.basis, pareto.COSTS, front_png,
                   recommended=pareto.recommend(front), f1_bound=pareto.f1_bound(front))
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
    """The rows as front points: finished ones (a running experiment shows its baseline's metrics), the
    workspace only when it differs from every other row."""
    return [row for row in rows if row.finished and (row.kind != "workspace" or all(
        other.files != row.files for other in rows if other is not row))]


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
body { font-family: system-ui, sans-serif; margin: 1em; color: #222; }
table { border-collapse: collapse; font-size: 0.8em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.4em; text-align: right; white-space: nowrap; }
th { background: #f2f2f2; white-space: normal; vertical-align: bottom; font-size: 0.9em; }
td.name { text-align: left; font-weight: bold; }
tr.running td, tr.queued td { color: #777; font-style: italic; } tr.failed td { color: #a00; }
td.reason { text-align: left; white-space: normal; max-width: 60em; }
tr.workspace td { background: #fffbe6; } tr.baseline td { background: #eef5ff; }
td.changed { color: #b00; font-weight: bold; }
td.GO { background: #d9f2d9 !important; } td.REVIEW { background: #fff2cc !important; }
td.NO-GO { background: #f8d0d0 !important; }
figure { display: inline-block; margin: 1em; vertical-align: top; } img { max-width: 100%; }
pre { background: #f6f6f6; padding: 1em; white-space: pre-wrap; }
"""


def front_section(front: pareto.Front | None, png: Path | None, sweeps: list[dict]) -> str:
    """The front's figure and tables, and the sweep points that failed; "" when there is neither."""
    parts = []
    if front is not None and png is not None:
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        parts.append(f"<h2>Pareto front: F1 ({front.basis}) against latency and size</h2>\n"
                     f"<p>One point per experiment: the F1, CPU batch-1 p50 per document and bytes on disk of the "
                     f"variant the gate judged, on log-scaled cost axes. Blue: no other experiment has a higher F1 "
                     f"at a lower cost (the front); grey: dominated; red: the teacher in fp32 and int8 (median over "
                     f"the experiments' benches, at the teacher's F1); dashed: the lowest F1 the gate accepts; "
                     f"ringed in green: the recommended point. Running, queued and failed experiments are left "
                     f"off. The last column is the extra cost of each further {pareto.STEP_POINTS:g} F1 point from "
                     f"the previous front point.</p>\n"
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
    if front.max_class_drop_points is not None and any(point.class_drops for point in front.points):
        bound += f" and within {front.max_class_drop_points:g} gold F1 points of it on each entity type"
    pick = pareto.recommend(front)
    if pick is None:
        best = max(front.points, key=lambda point: point.f1)
        return (f"<p><b>No experiment is {html.escape(bound)}</b>: the best, {html.escape(best.name)}, is "
                f"{100 * (teacher.f1 - best.f1):.2f} points below it{_worst_class(best)}.</p>")
    ratios = ", ".join(
        f"{pareto.quantity(pick.costs[key], unit)} {html.escape(title)} ({_times(pick.ratios[key])} the teacher's "
        f"fp32, {_times(pick.ratios_int8[key])} its int8 export, in its bench)"
        for key, (title, unit) in pareto.COSTS.items())
    memory = "" if pick.memory_mb is None else f", peak memory {pick.memory_mb:.0f} MB"
    return (f"<p><b>Recommended: {html.escape(pick.name)}</b> ({html.escape(pick.label)}), the cheapest on CPU p50 "
            f"(within {100 * pareto.LATENCY_TIE:.0f} %, the smallest on disk) {html.escape(bound)}: F1 {pick.f1:.4f} ({100 * (pick.f1 - teacher.f1):+.2f} points), {ratios}"
            f"{memory}{_worst_class(pick)}.</p>")


def _worst_class(point: pareto.Point) -> str:
    if not point.class_drops:
        return ""
    name = worst_class(point.class_drops)
    return (f"; its worst entity type, {html.escape(name)}, {point.class_drops[name]:.2f} gold F1 points below "
            "the teacher's")


def _times(ratio: float | None) -> str:
    return "?&times;" if ratio is None else f"{ratio:.2f}&times;"


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
    figures = "".join(f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
                      f"<figcaption>{html.escape(name)}</figcaption></figure>" for name, data in images)
    gate = f"<h2>Gate (workspace)</h2><pre>{html.escape(gate_summary)}</pre>" if gate_summary else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>nerdistill experiments</title>'
            f"<style>{STYLE}</style></head><body>\n<h1>nerdistill experiments</h1>\n"
            f"<p>Rows from <code>dvc exp show</code>: the workspace, each baseline commit and its experiments "
            f"(hover a name for its commit and date). First the gate's decision and the figures of the model "
            f"variant it judged (gate.variant): its F1 and F1 drop on the gate's basis, the entity type that lost "
            f"the most gold F1 points and how many, its batch-1 CPU p50 and bytes over the teacher's; then the "
            f"params; then the final PyTorch student's own F1. Red: differs from the baseline. A running, queued or "
            f"failed experiment has no figures of its own yet.</p>\n"
            f"{table_html(rows)}\n{front}\n{gate}<h2>Plots (workspace)</h2>\n{figures}\n</body></html>\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("reports/report.html"))
    parser.add_argument("--exp", action="append", default=[], metavar="NAME",
                        help="keep only these rows (experiment, baseline branch or workspace; repeatable)")
    parser.add_argument("--sweep", action="append", default=[], type=Path, metavar="RESULTS_JSON",
                        help="keep a sweep's points and list those that failed (sweeps/results/<grid>.json; "
                             "repeatable)")


def main(args: argparse.Namespace, params: None) -> int:
    write_report(Path.cwd(), args.out, experiments=args.exp or None, sweeps=tuple(args.sweep))
    return 0
