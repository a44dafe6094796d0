"""The HTML experiment report on a fabricated repository: real git + DVC, a toy stage that writes
eval/bench/gate metrics shaped like the pipeline's, one experiment, and a tiny PNG plot."""
from __future__ import annotations

import base64
import json
import os
import re
import struct
import subprocess
import sys
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from nerdistill import cli
from nerdistill.io import InputError
from nerdistill.experiment_table import COLUMNS, Row, cell, table_html
from nerdistill.report import write_report

# Metrics shaped like evaluate/bench/gate's, derived from pruning.ratio so an experiment changes them.
TOY_STAGE = '''
import json, pathlib, yaml
ratio = yaml.safe_load(open("params.yaml"))["pruning"]["ratio"]
out = pathlib.Path("metrics"); out.mkdir(exist_ok=True)
variants = {"cpu_fp32": {"doc_p50_ms": 100 * ratio}, "cpu_int8": {"doc_p50_ms": 50 * ratio}}
teacher = {"disk_bytes": 4e6, "variants": {"cpu_fp32": {"doc_p50_ms": 100.0}, "cpu_int8": {"doc_p50_ms": 60.0}}}
json.dump({"teacher": "teacher", "final": "final",
           "agreement": {"teacher": {"f1": 1.0}, "final": {"f1": 1 - ratio / 10}},
           "f1_drop_points": {"agreement": {"final": 10 * ratio}}}, open(out / "eval.json", "w"))
json.dump({"teacher": "teacher", "final": "final", "models": {"final": {"variants": variants}, "teacher": teacher},
           "ratios": {"doc_p50_ms": ratio, "parameters": 0.5, "disk_bytes": 0.5}}, open(out / "bench.json", "w"))
json.dump({"decision": "GO" if ratio < 0.4 else "NO-GO", "basis": "agreement", "model": "onnx_int8",
           "variant": "cpu_onnx", "checks": [{"name": "cpu_latency_p50_ms", "value": 100 * ratio,
           "threshold": 200, "passed": True, "on_fail": "REVIEW", "source": "toy"}],
           "f1": 1 - ratio / 10, "f1_drop_points": 10 * ratio, "doc_p50_ms": 100 * ratio, "disk_bytes": 2e6 * ratio,
           "peak_rss_mb": 100.0, "latency_ratio_vs_teacher_fp32": ratio / 2, "size_ratio_vs_teacher_fp32": 0.2},
          open(out / "gate.json", "w"))
'''
DVC_YAML = """stages:
  toy:
    cmd: python toy.py
    deps: [toy.py]
    params: [pruning]
    metrics:
      - metrics/eval.json: {cache: false}
      - metrics/bench.json: {cache: false}
      - metrics/gate.json: {cache: false}
"""


def _png(width: int = 2, height: int = 2) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _run(root: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("DVC_EXP_NAME", None)
    return subprocess.run(list(args), cwd=root, env=env, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def toy_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(repo, experiment name): the baseline (pruning.ratio 0.25) committed, one experiment at 0.5,
    the workspace back at the baseline with plots/latency.png in it."""
    root = tmp_path_factory.mktemp("report") / "repo"
    root.mkdir()
    (root / "toy.py").write_text(TOY_STAGE, encoding="utf-8")
    (root / "dvc.yaml").write_text(DVC_YAML, encoding="utf-8")
    (root / "params.yaml").write_text("pruning: {ratio: 0.25, scope: per_layer}\ntrain: {temperature: 2.5}\n"
                                      "student: {num_layers: 3}\ngate: {max_f1_drop: 1.0, max_agreement_drop: 5.0}\n",
                                      encoding="utf-8")
    _run(root, "git", "init", "-q", "-b", "main")
    _run(root, "git", "config", "user.email", "report@example.invalid")
    _run(root, "git", "config", "user.name", "report")
    _run(root, "dvc", "init", "-q")
    _run(root, "dvc", "repro", "-q")
    _run(root, "git", "add", "-A")
    _run(root, "git", "commit", "-q", "-m", "baseline")
    output = _run(root, "dvc", "exp", "run", "-S", "pruning.ratio=0.5")
    name = output.split("Reproducing experiment '", 1)[1].split("'", 1)[0]
    _run(root, "git", "checkout", "--", ".")
    (root / "plots").mkdir()
    (root / "plots" / "latency.png").write_bytes(_png())
    return root, name


class _Page(HTMLParser):
    """The first table's rows as {header: (text, css classes)}, image sources, and every URL-bearing
    attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: list[str] = []
        self.rows: list[dict[str, tuple[str, str]]] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self._cell: tuple[str, str] | None = None
        self._cells: list[tuple[str, str]] = []
        self._tables_done = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.links += [value or "" for key, value in attrs if key in ("src", "href")]
        if tag == "img":
            self.images.append(found["src"] or "")
        elif tag in ("td", "th"):
            self._cell = ("", found.get("class") or "")
        elif tag == "tr":
            self._cells = []

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell = (self._cell[0] + data, self._cell[1])

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._tables_done += 1
        if self._tables_done:
            return
        if tag in ("td", "th") and self._cell is not None:
            self._cells.append(self._cell)
            self._cell = None
        elif tag == "tr" and self._cells:
            if not self.headers:
                self.headers = [text for text, _ in self._cells]
            else:
                self.rows.append(dict(zip(self.headers, self._cells)))


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_report_compares_workspace_baseline_and_experiment(toy_repo: tuple[Path, str], tmp_path: Path) -> None:
    root, exp_name = toy_repo
    out = write_report(root, tmp_path / "reports" / "report.html")
    page = _parse(out)
    rows = {row["experiment"][0]: row for row in page.rows}
    assert set(rows) == {"workspace", "main", exp_name}

    # The decision and the figures it rests on first, the params after.
    assert page.headers[:8] == ["experiment", "state", "decision", "F1", "F1 drop (pts)", "worst class drop (pts)",
                                "latency / teacher fp32", "size / teacher fp32"]
    assert page.headers.index("pruning.ratio") > page.headers.index("judged model")
    baseline, experiment = rows["main"], rows[exp_name]
    assert baseline["decision"] == ("GO", "GO") and experiment["decision"] == ("NO-GO", "NO-GO changed")
    assert experiment["F1"] == ("0.9500", "changed") and experiment["F1 drop (pts)"][0] == "5.00"
    assert experiment["latency / teacher fp32"] == ("0.250", "changed")
    assert experiment["size / teacher fp32"] == ("0.200", "")  # unchanged: not flagged
    assert experiment["latency / teacher int8"][0] == ""  # no teacher int8 in the toy bench
    assert (experiment["basis"][0], experiment["judged model"][0]) == ("agreement", "onnx_int8")
    assert baseline["pruning.ratio"] == ("0.25", "") and experiment["pruning.ratio"] == ("0.5", "changed")
    assert experiment["train.temperature"] == ("2.5", "")
    assert experiment["final agreement F1"][0] == "0.9500" and experiment["judged p50 (ms)"][0] == "50.0"
    assert experiment["final gold F1"][0] == ""  # no gold set scored: an empty cell, not an error
    assert experiment["worst class drop (pts)"][0] == ""  # nor a drop per entity type
    assert experiment["state"][0] == "" and baseline["state"][0] == ""

    # Self-contained: the sources are the inlined front and workspace PNGs, byte for byte.
    front_png = base64.b64encode((tmp_path / "reports" / "report_front.png").read_bytes()).decode()
    assert page.images == [f"data:image/png;base64,{front_png}",
                           f"data:image/png;base64,{base64.b64encode(_png()).decode()}"]
    assert all(link.startswith("data:") for link in page.links)
    assert "PASS" in out.read_text(encoding="utf-8").upper()  # the workspace gate summary


def test_report_keeps_only_the_named_experiments(toy_repo: tuple[Path, str], tmp_path: Path) -> None:
    root, exp_name = toy_repo
    page = _parse(write_report(root, tmp_path / "report.html", experiments=["main", exp_name]))
    assert [row["experiment"][0] for row in page.rows] == ["main", exp_name]
    with pytest.raises(InputError, match="no-such-exp.*main"):
        write_report(root, tmp_path / "other.html", experiments=["no-such-exp"])
    assert not (tmp_path / "other.html").exists()


def test_report_command_writes_the_page(toy_repo: tuple[Path, str], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    root, exp_name = toy_repo
    monkeypatch.chdir(root)
    assert cli.main(["report", "--out", str(tmp_path / "cli.html"), "--exp", exp_name]) == 0
    assert [row["experiment"][0] for row in _parse(tmp_path / "cli.html").rows] == [exp_name]


def test_outside_a_dvc_repository_the_error_says_so(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="dvc exp show"):
        write_report(tmp_path, tmp_path / "report.html")


def test_cells_follow_the_final_students_name_and_skip_missing_values() -> None:
    eval_metrics = {"final": "small", "agreement": {"small": {"f1": 0.91234}}}
    row = Row(name="x", kind="experiment", rev="abc1234", created="", baseline="main",
              files={"metrics/eval.json": eval_metrics})
    by_header = {column.header: cell(row, column) for column in COLUMNS}
    assert by_header["final agreement F1"] == "0.9123"
    assert by_header["final gold F1"] == "" and by_header["decision"] == "" and by_header["pruning.ratio"] == ""


def test_the_worst_entity_type_and_its_drop_share_one_cell() -> None:
    gate = {"decision": "REVIEW", "class_f1_drop_points": {"LOC": 0.4, "ORG": 2.5, "PER": 0.3}}
    row = Row(name="x", kind="experiment", rev="abc1234", created="", baseline="main",
              files={"metrics/gate.json": gate})
    worst = next(column for column in COLUMNS if column.header == "worst class drop (pts)")
    assert cell(row, worst) == "ORG 2.50"
    gate["class_f1_drop_points"] = {}
    assert cell(row, worst) == ""


def test_an_unfinished_experiment_shows_its_state_and_params_but_no_figures() -> None:
    files = {"params.yaml": {"pruning": {"ratio": 0.15}}, "metrics/gate.json": {"decision": "GO", "f1": 0.9}}
    baseline = Row(name="main", kind="baseline", rev="abc1234", created="", baseline="", files=files)
    running = Row(name="curly-coof", kind="experiment", rev="def5678", created="", baseline="main", files=files,
                  state="running")
    assert not running.finished and baseline.finished
    assert Row(name="done", kind="experiment", rev="", created="", baseline="main", files=files,
               state="success").finished
    by_header = {column.header: cell(running, column) for column in COLUMNS}
    assert by_header["decision"] == by_header["F1"] == "" and by_header["pruning.ratio"] == "0.15"
    page = _Page()
    page.feed(table_html([baseline, running]))
    assert page.rows[1]["state"] == ("running", "state") and page.rows[1]["decision"] == ("", "")
    assert page.rows[0]["decision"] == ("GO", "GO")
    assert '<tr class="experiment running">' in table_html([running])


def _front_names(page: str, cost: str) -> list[str]:
    table = page.split(f"<h3>Front on {cost}")[1].split("</table>")[0]
    return re.findall(r'<td class="name">([^<]+)</td>', table)


def test_report_draws_the_pareto_front(toy_repo: tuple[Path, str], tmp_path: Path) -> None:
    root, exp_name = toy_repo
    out = write_report(root, tmp_path / "report.html")
    page = out.read_text(encoding="utf-8")
    png = tmp_path / "report_front.png"
    assert f'<img alt="report_front.png" src="data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}"' \
        in page
    # The baseline (ratio 0.25) has the higher F1 at the lower latency and size: the experiment is
    # dominated, and the workspace, identical to the baseline, is not a point of its own.
    assert _front_names(page, "CPU p50") == ["main"] and _front_names(page, "size") == ["main"]
    latency = page.split("<h3>Front on CPU p50")[1].split("</table>")[0]
    assert "<td>L3-h25</td><td>0.9750</td><td>25 ms</td>" in latency
    # Both rows are within the gate's 5-point bound; the baseline is the cheaper.
    assert ("<b>Recommended: main</b> (L3-h25), the cheapest on CPU p50 (within 8 %, the smallest on disk) within 5 F1 points (agreement) of the "
            "teacher in fp32 (1.0000): F1 0.9750 (-2.50 points), 25 ms CPU p50 per document (0.12&times; the "
            "teacher's fp32, ?&times; its int8 export, in its bench)") in page  # no teacher int8 in the toy bench
    assert "peak memory 100 MB." in page
    assert "F1 (agreement)" in page


def test_report_of_a_sweep_keeps_its_points_and_lists_its_failures(toy_repo: tuple[Path, str], tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    root, exp_name = toy_repo
    results = tmp_path / "toy.json"
    points = [{"name": exp_name, "values": {"pruning.ratio": 0.5}, "status": "success", "reason": ""},
              {"name": "L9-h99", "values": {"student.num_layers": 9}, "status": "failed",
               "reason": "prune: <no head left>"},
              {"name": "gone-exp", "values": {}, "status": "success", "reason": ""}]
    results.write_text(json.dumps({"grid": "sweeps/toy.yaml", "points": points}), encoding="utf-8")
    out = write_report(root, tmp_path / "sweep.html", sweeps=(results,))
    page = _parse(out)
    assert [row["experiment"][0] for row in page.rows[:1]] == [exp_name]
    text = out.read_text(encoding="utf-8")
    failed = text.split("Sweep points that failed")[1]
    assert "L9-h99" in failed and "prune: &lt;no head left&gt;" in failed and exp_name not in failed
    assert "gone-exp" in caplog.text
    results.write_text("{}", encoding="utf-8")
    with pytest.raises(InputError, match="not a sweep results file"):
        write_report(root, tmp_path / "bad.html", sweeps=(results,))


def test_without_a_point_in_the_bound_the_report_says_how_far_the_best_falls_short(tmp_path: Path) -> None:
    from nerdistill import front
    from nerdistill.report import front_section
    from nerdistill.results import SUMMARY_BYTES, SUMMARY_P50

    def point(name: str, f1: float) -> front.Point:
        return front.Point(name=name, label=name, f1=f1, costs={SUMMARY_P50: 10.0, SUMMARY_BYTES: 1e6},
                           ratios={SUMMARY_P50: 0.2, SUMMARY_BYTES: 0.1})

    students = [point("L2", 0.70), point("L3", 0.74)]
    built = front.Front(basis="gold", points=students, teacher=[point("teacher cpu_fp32", 0.7555)],
                        fronts={SUMMARY_P50: students, SUMMARY_BYTES: students}, left_out=[], max_drop_points=1.0)
    png = tmp_path / "front.png"
    png.write_bytes(_png())
    page = front_section(built, png, [])
    assert ("<b>No experiment is within 1 F1 point (gold) of the teacher in fp32 (0.7555)</b>: the best, L3, is "
            "1.55 points below it.") in page
    assert "Recommended" not in page


def test_the_recommendation_names_the_per_type_bound_and_the_picks_worst_type(tmp_path: Path) -> None:
    from nerdistill import front
    from nerdistill.report import front_section
    from nerdistill.results import SUMMARY_BYTES, SUMMARY_P50

    def point(name: str, f1: float, p50: float, org: float) -> front.Point:
        return front.Point(name=name, label=name, f1=f1, costs={SUMMARY_P50: p50, SUMMARY_BYTES: 1e6},
                           ratios={SUMMARY_P50: p50 / 100, SUMMARY_BYTES: 0.1},
                           ratios_int8={SUMMARY_P50: p50 / 50, SUMMARY_BYTES: 0.2},
                           class_drops={"LOC": 0.2, "ORG": org, "PER": 0.1})

    # L2 is cheaper and within the overall bound, but 2.5 points below the teacher on ORG.
    students = [point("L2", 0.895, 10.0, 2.5), point("L3", 0.897, 20.0, 0.6)]
    built = front.Front(basis="gold", points=students, teacher=[point("teacher cpu_fp32", 0.9, 100.0, 0.0)],
                        fronts={SUMMARY_P50: students, SUMMARY_BYTES: students}, left_out=[], max_drop_points=1.0,
                        max_class_drop_points=2.0)
    png = tmp_path / "front.png"
    png.write_bytes(_png())
    page = front_section(built, png, [])
    assert ("<b>Recommended: L3</b> (L3), the cheapest on CPU p50 (within 8 %, the smallest on disk) within 1 F1 point (gold) of the teacher in fp32 "
            "(0.9000) and within 2 gold F1 points of it on each entity type: F1 0.8970") in page
    assert "its worst entity type, ORG, 0.60 gold F1 points below the teacher's.</p>" in page


def test_a_queued_experiment_is_marked_kept_off_the_front_and_the_page_fits_a_laptop(
        toy_repo: tuple[Path, str], tmp_path: Path) -> None:
    """`dvc exp show` lists a queued (or running) experiment with its baseline's metrics: the report must
    neither show them as its own nor draw them on the front. The page reads at 1,400 px without scrolling."""
    import shutil

    root = tmp_path / "repo"
    shutil.copytree(toy_repo[0], root, symlinks=True)
    _run(root, "dvc", "exp", "run", "--queue", "-n", "waiting", "-S", "pruning.ratio=0.75")
    out = write_report(root, tmp_path / "report.html")
    rows = {row["experiment"][0]: row for row in _parse(out).rows}
    assert rows["waiting"]["state"][0] == "queued" and rows["waiting"]["decision"][0] == ""
    assert rows["waiting"]["pruning.ratio"][0] == "0.75"
    page = out.read_text(encoding="utf-8")
    assert "<li>waiting: queued, no results yet</li>" in page
    assert "waiting" not in page.split("<h3>Front on CPU p50")[1].split("</table>")[0]
    _check_width(out)


def _check_width(page: Path) -> None:
    """In headless Chromium at 1,400 x 900: no horizontal scroll, the decision column in the first 400 px."""
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = next((path for path in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(path).exists()), None)
    with sync_api.sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        except sync_api.Error as err:
            pytest.skip(f"no headless Chromium to measure the page with: {err}")
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": 900})
            tab.goto(page.as_uri())
            assert tab.evaluate("document.documentElement.scrollWidth") <= 1400
            headers = tab.evaluate("[...document.querySelectorAll('table')[0].querySelectorAll('th')]"
                                   ".map(th => [th.textContent, th.getBoundingClientRect().left])")
            assert dict(headers)["decision"] < 400
        finally:
            browser.close()
