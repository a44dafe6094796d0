"""Sweeps: the grid file, its points and their derived layers, the waves, the queue's output, and
a real `dvc queue` run of a toy pipeline in which some points fail."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nerdistill import cli, dvc_queue, sweep
from nerdistill.params import ParamsError
from nerdistill.params_reader import load_params, params_from_dict, parse_override

REPO = Path(__file__).resolve().parents[1]


def _grid(tmp_path: Path, text: str, name: str = "grid.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("text, message", [
    ("- a\n- b\n", "expected a mapping"),
    ("grid: {pruning.ratio: [0.25]}\nsteps: 3\n", "unknown key 'steps'"),
    ("base: {distill.epochs: 2}\n", "grid must map at least one param key"),
    ("grid: {pruning.ratio: 0.25}\n", r"grid.pruning.ratio = 0.25; expected a non-empty list"),
    ("grid: {pruning.ratio: []}\n", r"grid.pruning.ratio = \[\]"),
    ("grid: {pruning.ratio: [0.25, 0.25]}\n", "repeats a value"),
    ("base: {pruning.ratio: 0.5}\ngrid: {pruning.ratio: [0.25]}\n", "pruning.ratio is in both base and grid"),
    ("grid: {pruning.ratio: [0.25]}\njobs: 0\n", "jobs = 0"),
    ("grid: {pruning.ratio: [0.25\n", "not valid YAML"),
])
def test_grid_file_errors_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = _grid(tmp_path, text)
    with pytest.raises(sweep.GridError, match=message) as err:
        sweep.load_grid(path)
    assert str(path) in str(err.value)


def test_a_missing_grid_file_points_at_the_example(tmp_path: Path) -> None:
    with pytest.raises(sweep.GridError, match="grid file not found; see sweeps/demo.yaml"):
        sweep.load_grid(tmp_path / "nope.yaml")


@pytest.mark.parametrize("text, extra, message", [
    ("grid: {pruning.ratoi: [0.25]}\n", {}, "grid key 'pruning.ratoi' is not a params.yaml value; did you mean "
                                            "pruning.ratio"),
    ("base: {distill: {epochs: 2}}\ngrid: {pruning.ratio: [0.25]}\n", {}, "base key 'distill' is not"),
    ("base: {student.teacher_layers: [1, 2]}\ngrid: {pruning.ratio: [0.25]}\n", {},
     "base sets student.teacher_layers, which the sweep derives"),
    ("grid: {pruning.ratio: [0.25]}\n", {"train.layer_map.student": [2]}, "-S sets train.layer_map.student"),
    ("grid: {pruning.ratio: [0.25]}\n", {"pruning.ratio": 0.5}, "-S pruning.ratio overrides a key the grid sweeps"),
])
def test_keys_must_be_params_the_sweep_may_set(tmp_path: Path, text: str, extra: dict, message: str) -> None:
    grid = sweep.load_grid(_grid(tmp_path, text))
    with pytest.raises(sweep.GridError, match=message):
        sweep.check_keys(grid, params_from_dict({}), extra)


def test_shipped_grids_parse() -> None:
    demo, real = sweep.load_grid(REPO / "sweeps" / "demo.yaml"), sweep.load_grid(REPO / "sweeps" / "real.yaml")
    for grid in (demo, real):
        sweep.check_keys(grid, load_params(REPO / "params.yaml"), {})
    assert len(sweep.expand(demo)) == 4 and len(sweep.expand(real)) == 4
    assert real.grid["student.num_layers"] == [3, 4] and real.jobs == 1


def test_expand_is_the_cartesian_product_last_key_fastest(tmp_path: Path) -> None:
    grid = sweep.load_grid(_grid(tmp_path, "grid: {student.num_layers: [2, 3], pruning.ratio: [0.25, 0.5]}\n"))
    assert sweep.expand(grid) == [{"student.num_layers": 2, "pruning.ratio": 0.25},
                                  {"student.num_layers": 2, "pruning.ratio": 0.5},
                                  {"student.num_layers": 3, "pruning.ratio": 0.25},
                                  {"student.num_layers": 3, "pruning.ratio": 0.5}]


@pytest.mark.parametrize("num_layers, depth, copied, teacher, student", [
    (1, 4, [4], [4], [1]),                                  # one layer: the teacher's last, mapped
    (4, 4, [1, 2, 3, 4], [2, 3, 4], [2, 3, 4]),             # as deep as the teacher: every layer
    (3, 4, [1, 2, 4], [2, 4], [2, 3]),                      # the Makefile's DEMO_OVERRIDES
    (4, 6, [1, 2, 4, 6], [2, 4, 6], [2, 3, 4]),             # the Makefile's REAL_OVERRIDES
    (2, 12, [1, 12], [12], [2]),
    (6, 12, [1, 3, 5, 7, 9, 12], [3, 5, 7, 9, 12], [2, 3, 4, 5, 6]),
])
def test_derived_layers_spread_over_the_teacher(num_layers, depth, copied, teacher, student) -> None:
    derived = sweep.derive_layers(num_layers, depth)
    assert derived == {"student.teacher_layers": copied, "train.layer_map.teacher": teacher,
                       "train.layer_map.student": student}
    # What the pipeline checks: a valid student for this teacher.
    params_from_dict({"student": {"num_layers": num_layers, "teacher_layers": copied},
                      "train": {"layer_map": {"teacher": teacher, "student": student}}})


@pytest.mark.parametrize("num_layers", [0, 5, "3", True])
def test_a_depth_the_teacher_cannot_give_is_refused(num_layers) -> None:
    with pytest.raises(ValueError, match="student.num_layers = .*the teacher has 4 layers"):
        sweep.derive_layers(num_layers, 4)


def test_point_names_are_short_and_ordered_the_same_way() -> None:
    assert sweep.point_name({"pruning.ratio": 0.25, "student.num_layers": 3}) == "L3-h25"
    assert sweep.point_name({"student.vocab": "corpus", "pruning.ffn_ratio": 0.5, "pruning.ratio": 0.125,
                             "student.num_layers": 3}) == "L3-h12.5-f50-corpus"
    assert sweep.point_name({"train.temperature": 3.0, "distill.phase1_weights": [1, 0.5, 0, 0]}) == \
        "temperature3.0-phase1_weights_1_0.5_0_0_"


def _plan(tmp_path: Path, text: str, extra: dict | None = None, depth: int = 4) -> list[sweep.Point]:
    grid = sweep.load_grid(_grid(tmp_path, text))
    params = params_from_dict({})
    sweep.check_keys(grid, params, extra or {})
    return sweep.plan(grid, params, extra or {}, lambda name: depth, tmp_path)


def test_plan_derives_layers_and_makes_local_paths_absolute(tmp_path: Path) -> None:
    (tmp_path / "teachers" / "small").mkdir(parents=True)
    points = _plan(tmp_path, "base: {teacher.model_name: teachers/small, distill.epochs: 2}\n"
                             "grid: {student.num_layers: [2, 5], pruning.ratio: [0.5]}\n", {"bench.repeats": 3})
    good, bad = points
    assert good.name == "L2-h50" and not good.error
    assert good.overrides == {"teacher.model_name": str((tmp_path / "teachers" / "small").resolve()),
                              "distill.epochs": 2, "bench.repeats": 3, "student.num_layers": 2, "pruning.ratio": 0.5,
                              "student.teacher_layers": [1, 4], "train.layer_map.teacher": [4],
                              "train.layer_map.student": [2]}
    assert good.params.student.teacher_layers == (1, 4) and good.params.distill.epochs == 2
    assert good.argv()[:6] == ["dvc", "exp", "run", "--queue", "-n", "L2-h50"]
    assert "student.teacher_layers=[1,4]" in good.argv() and "bench.repeats=3" in good.argv()
    # A point the pipeline would refuse is kept with why, not queued.
    assert bad.name == "L5-h50" and "the teacher has 4 layers" in bad.error and bad.params is None


def test_a_hub_id_stays_as_written_and_bad_values_are_the_points_error(tmp_path: Path) -> None:
    (point,) = _plan(tmp_path, "base: {teacher.model_name: org/model}\ngrid: {pruning.ratio: [1.5]}\n", depth=12)
    assert point.overrides["teacher.model_name"] == "org/model"
    assert point.error == "pruning.ratio = 1.5 is out of range; allowed: a fraction in [0, 1)"


def test_points_that_would_share_a_name_are_refused(tmp_path: Path) -> None:
    with pytest.raises(sweep.GridError, match="both named h25"):
        _plan(tmp_path, "grid: {pruning.ratio: [0.25, 0.2500001]}\n")


def test_command_line_overrides_read_values_as_yaml() -> None:
    assert parse_override("distill.learning_rate=5e-05") == ("distill.learning_rate", 5e-05)
    assert parse_override("student.teacher_layers=[1,2,4]") == ("student.teacher_layers", [1, 2, 4])
    assert parse_override("teacher.model_name=/models/a=b") == ("teacher.model_name", "/models/a=b")
    with pytest.raises(ParamsError, match="-S 'distill.epochs': expected KEY=VALUE"):
        parse_override("distill.epochs")


def test_format_value_writes_what_dvc_reads_back() -> None:
    assert [sweep.format_value(v) for v in (True, 0.0005, 5e-05, [1, 2, 4], "a/b")] == \
        ["true", "0.0005", "5e-05", "[1,2,4]", "a/b"]


def _waves(tmp_path: Path, text: str) -> list[list[str]]:
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    points = _plan(tmp_path, text, depth=12)
    levels = [dvc_queue._signature(keys) for keys in dvc_queue._cumulative_keys(tmp_path / "dvc.yaml")]
    return [[point.name for point in wave] for wave in sweep.waves(points, levels)]


def test_waves_run_annotate_once_and_distill_once_per_depth(tmp_path: Path) -> None:
    assert _waves(tmp_path, "grid: {student.num_layers: [2, 3], pruning.ratio: [0.25, 0.5]}\n") == \
        [["L2-h25"], ["L3-h25"], ["L2-h50", "L3-h50"]]
    # Pruning only: one distill for all, so one point, then the rest together.
    assert _waves(tmp_path, "grid: {pruning.ratio: [0.1, 0.25, 0.5]}\n") == [["h10"], ["h25", "h50"]]
    # A distill param is a distill input as the depth is: every other point has its own distill.
    assert _waves(tmp_path, "grid: {train.temperature: [2.0, 3.0], student.num_layers: [2, 3]}\n") == \
        [["L2-temperature2.0"], ["L3-temperature2.0", "L2-temperature3.0", "L3-temperature3.0"]]


QUEUE_STATUS = """Task     Name    Created       Status
0be0993  L2-h50  06:46 AM      Failed
07ef6ea  L3-h50  Jan 02, 2025  Running
b937149          06:45 AM      Queued

Worker status: 1 active, 1 idle
"""


def test_queue_status_is_read_by_task() -> None:
    tasks, workers = dvc_queue.parse_status(QUEUE_STATUS)
    assert tasks == {"0be0993": ("L2-h50", "Failed"), "07ef6ea": ("L3-h50", "Running"), "b937149": ("", "Queued")}
    assert workers == 2
    assert dvc_queue.parse_status("No experiment tasks in the queue.\n\nWorker status: 0 active, 0 idle\n") == ({}, 0)


def test_failure_reason_names_the_stage_and_the_error() -> None:
    nerdistill_error = """Reproducing experiment 'L2-h50'
Running stage 'prune':
> nerdistill prune --model models/student_distilled
06:46:01 INFO nerdistill.stages.prune: scoring heads
06:46:02 ERROR nerdistill: pruning.ratio = 0.99 leaves no head in layer 1
ERROR: failed to reproduce 'prune': failed to run: nerdistill prune ..., exited with 2
"""
    assert dvc_queue.failure_reason(nerdistill_error) == "prune: pruning.ratio = 0.99 leaves no head in layer 1"
    traceback = """Running stage 'distill':
Traceback (most recent call last):
  File "x.py", line 1, in <module>
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB
ERROR: failed to reproduce 'distill': failed to run: nerdistill distill, exited with 1
"""
    assert dvc_queue.failure_reason(traceback) == "distill: torch.OutOfMemoryError: CUDA out of memory. Tried to " \
                                                  "allocate 2.00 GiB"
    assert dvc_queue.failure_reason("ERROR: failed to reproduce 'gate': exited with 1\n") == \
        "ERROR: failed to reproduce 'gate': exited with 1"


# A toy pipeline with the real pipeline's stage names and params: each stage appends its name to a
# log outside the repository (what really ran, across scratch copies), and gate fails at ratio 0.5.
TOY_STAGE = '''
import json, pathlib, sys, yaml
stage, log = sys.argv[1], sys.argv[2]
params = yaml.safe_load(open("params.yaml"))
with open(log, "a") as out:
    out.write(stage + "\\n")
pathlib.Path(stage).mkdir(exist_ok=True)
pathlib.Path(stage, "out.txt").write_text(json.dumps(params, sort_keys=True))
if stage == "gate":
    ratio, layers = params["pruning"]["ratio"], params["student"]["num_layers"]
    if ratio == 0.5:
        sys.exit("12:00:00 ERROR nerdistill: toy gate refuses ratio 0.5")
    pathlib.Path("metrics").mkdir(exist_ok=True)
    teacher = {"disk_bytes": 1000, "variants": {"cpu_fp32": {"doc_p50_ms": 10.0}, "cpu_int8": {"doc_p50_ms": 6.0}}}
    json.dump({"teacher": "teacher", "final": "final", "models": {"teacher": teacher}},
              open("metrics/bench.json", "w"))
    json.dump({"teacher": "teacher", "final": "final", "agreement": {"teacher": {"f1": 1.0}}},
              open("metrics/eval.json", "w"))
    json.dump({"decision": "GO", "basis": "agreement", "model": "final", "variant": "cpu_fp32",
               "f1": 0.8 + 0.05 * layers, "f1_drop_points": 20 - 5 * layers, "doc_p50_ms": 2.0 * layers,
               "disk_bytes": 300 * layers, "peak_rss_mb": 100, "latency_ratio_vs_teacher_fp32": 0.2 * layers,
               "size_ratio_vs_teacher_fp32": 0.3 * layers}, open("metrics/gate.json", "w"))
'''
TOY_DVC_YAML = """stages:
  annotate:
    cmd: python toy.py annotate {log}
    deps: [toy.py]
    params: [base.seed, teacher, annotate]
    outs: [annotate]
  distill:
    cmd: python toy.py distill {log}
    deps: [toy.py, annotate]
    params: [base.seed, teacher.model_name, student, distill]
    outs: [distill]
  gate:
    cmd: python toy.py gate {log}
    deps: [toy.py, distill]
    params: [pruning]
    outs: [gate]
    metrics:
      - metrics/gate.json: {{cache: false}}
      - metrics/bench.json: {{cache: false}}
      - metrics/eval.json: {{cache: false}}
"""


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


@pytest.fixture(scope="module")
def toy_sweep(tmp_path_factory: pytest.TempPathFactory, random_teacher_dir: Path) -> tuple[Path, Path, int, str]:
    """(repo, stage log, exit status, stdout) of `nerdistill sweep` on a 2 x 2 grid of the toy."""
    root = tmp_path_factory.mktemp("sweep") / "repo"
    root.mkdir()
    stage_log = root.parent / "stages.log"
    (root / "toy.py").write_text(TOY_STAGE, encoding="utf-8")
    (root / "dvc.yaml").write_text(TOY_DVC_YAML.format(log=stage_log), encoding="utf-8")
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["teacher"]["model_name"] = str(random_teacher_dir)  # 2 layers
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    (root / "sweeps").mkdir()
    (root / "sweeps" / "toy.yaml").write_text("base: {distill.epochs: 2}\n"
                                              "grid: {student.num_layers: [1, 2], pruning.ratio: [0.25, 0.5]}\n"
                                              "jobs: 2\n", encoding="utf-8")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for command in (["git", "init", "-q", "-b", "main"], ["git", "config", "user.email", "t@example.invalid"],
                    ["git", "config", "user.name", "t"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                    ["git", "commit", "-q", "-m", "toy"]):
        subprocess.run(command, cwd=root, env=env, check=True, capture_output=True)
    script = ("import sys; from nerdistill import cli, dvc_queue; dvc_queue.POLL_S = 1.0; "
              "sys.exit(cli.main(['sweep', '--grid', 'sweeps/toy.yaml']))")
    done = subprocess.run([sys.executable, "-c", script], cwd=root, env={**env, "DVC_NO_ANALYTICS": "1"},
                          capture_output=True, text=True, timeout=600)
    print(done.stderr[-3000:])
    return root, stage_log, done.returncode, done.stdout


def test_sweep_runs_every_point_and_shares_stages_through_the_run_cache(toy_sweep) -> None:
    root, stage_log, returncode, stdout = toy_sweep
    assert returncode == 1  # two points failed
    # Every queued command line printed, as a user could paste it.
    lines = stdout.strip().splitlines()
    assert [shlex.split(line)[5] for line in lines] == ["L1-h25", "L1-h50", "L2-h25", "L2-h50"]
    assert "-S 'student.teacher_layers=[2]'" in lines[0] and "-S distill.epochs=2" in lines[0]
    ran = stage_log.read_text(encoding="utf-8").split()
    assert ran.count("annotate") == 1       # wave 1; the three others restored it
    assert ran.count("distill") == 2        # once per depth
    assert ran.count("gate") == 4
    results = json.loads((root / "sweeps" / "results" / "toy.json").read_text(encoding="utf-8"))
    by_name = {point["name"]: point for point in results["points"]}
    assert {name: point["status"] for name, point in by_name.items()} == \
        {"L1-h25": "success", "L2-h25": "success", "L1-h50": "failed", "L2-h50": "failed"}
    assert by_name["L1-h50"]["reason"] == "gate: toy gate refuses ratio 0.5"
    assert [by_name[name]["wave"] for name in ("L1-h25", "L2-h25", "L1-h50", "L2-h50")] == [1, 2, 3, 3]
    listed = subprocess.run([sys.executable, "-m", "dvc", "exp", "ls", "--name-only"], cwd=root, text=True,
                            capture_output=True, check=True).stdout.split()
    assert sorted(listed) == ["L1-h25", "L2-h25"]


def test_sweep_report_draws_the_front_and_lists_the_failures(toy_sweep) -> None:
    root = toy_sweep[0]
    page = (root / "reports" / "sweep-toy.html").read_text(encoding="utf-8")
    assert re.search(r'<img alt="sweep-toy_front.png" src="data:image/png;base64,', page)
    assert (root / "reports" / "sweep-toy_front.png").is_file()
    # L2 has the higher F1 at the higher cost: both on the front, the step from L1 to L2 priced.
    latency = page.split("<h3>Front on CPU p50")[1].split("</table>")[0]
    assert re.findall(r'<td class="name">([^<]+)</td>', latency) == ["L1-h25", "L2-h25"]
    assert "<td>+0.2 ms</td>" in latency  # 2 ms more for 5 F1 points: 0.2 ms per further 0.5 point
    failed = page.split("Sweep points that failed")[1]
    assert "L1-h50" in failed and "gate: toy gate refuses ratio 0.5" in failed


def test_names_already_taken_stop_the_sweep_before_queueing(toy_sweep, monkeypatch) -> None:
    root = toy_sweep[0]
    monkeypatch.chdir(root)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    assert cli.main(["sweep", "--grid", "sweeps/toy.yaml", "--results", str(root.parent / "again.json")]) == 2
    assert not (root.parent / "again.json").exists()


def test_dry_run_prints_the_commands_and_queues_nothing(toy_sweep, monkeypatch, capsys) -> None:
    root = toy_sweep[0]
    monkeypatch.chdir(root)
    assert cli.main(["sweep", "--grid", "sweeps/toy.yaml", "--dry-run", "-S", "distill.epochs=3",
                     "--results", str(root.parent / "dry.json")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and all("-S distill.epochs=3" in line for line in out)
    assert not (root.parent / "dry.json").exists()
