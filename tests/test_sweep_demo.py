"""End to end: `nerdistill sweep --grid sweeps/demo.yaml` on a copy of this repository.

The shipped demo grid (2 depths x 2 head ratios) with the demo teacher, on the first 200 lines
of the sample corpus and one distill epoch (the longest test of the suite: CI time): four queued
DVC experiments in three waves, annotate once, distill once per depth, then the report's front and
the MLflow parent runs. Then one `dvc exp run --temp` of a point with looser gate bounds, which DVC
answers from its run-cache but for the gate. No MLFLOW_TRACKING_URI is set: every run, queued or
temporary, must reach the checkout's own mlflow.db.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CORPUS_LINES = 200
NAMES = ["L2-h25", "L2-h50", "L3-h25", "L3-h50"]
# The temporary experiment: a point's params with bounds that let its gate say GO (one distill epoch on
# 200 lines makes a poor student) on a loaded machine.
TEMP_POINT = "L3-h50"
LOOSE_GATE = ("gate.max_agreement_drop=100", "gate.min_f1=0", "gate.min_export_fidelity=0",
              "gate.max_latency_ratio_vs_teacher_int8=100")


def _copy_repo(dest: Path) -> None:
    """Tracked files and new ones git does not ignore, as a commit of this working tree would hold."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in [*listed, ".dvc/config"]:
        source = REPO / name
        if name and source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


@pytest.fixture(scope="module")
def demo_sweep(tmp_path_factory: pytest.TempPathFactory, demo_teacher_dir: Path) -> tuple[Path, str, str, str]:
    """(repo, the sweep's stdout + stderr, the checkout's MLflow URI, the temporary experiment's name)
    after one `nerdistill sweep` of the demo grid and one `dvc exp run --temp`."""
    root = tmp_path_factory.mktemp("sweep_demo") / "repo"
    _copy_repo(root)
    corpus = root / "data" / "raw" / "corpus.txt"
    corpus.write_text("".join(corpus.read_text(encoding="utf-8").splitlines(keepends=True)[:CORPUS_LINES]),
                      encoding="utf-8")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(root / "src"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true", "TOKENIZERS_PARALLELISM": "false"}
    for name in ("DVC_EXP_NAME", "MLFLOW_TRACKING_URI", "DVC_ROOT"):
        env.pop(name, None)
    for command in (["git", "init", "-q", "-b", "main"], ["git", "config", "user.email", "sweep@example.invalid"],
                    ["git", "config", "user.name", "sweep"], ["git", "add", "-A"],
                    ["git", "commit", "-q", "-m", "demo corpus head"]):
        subprocess.run(command, cwd=root, env=env, check=True, capture_output=True)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "nerdistill.cli", "sweep", "--grid", "sweeps/demo.yaml",
                           "-S", f"teacher.model_name={demo_teacher_dir}", "-S", "distill.epochs=1"],
                          cwd=root, env=env,
                          capture_output=True, text=True, timeout=3600)
    output = done.stdout + done.stderr
    print(f"\nsweep: {time.monotonic() - started:.0f} s\n{output[-4000:]}")
    assert done.returncode == 0, output[-6000:]
    return root, output, f"sqlite:///{root / 'mlflow.db'}", _temp_run(root, env)


def _temp_run(root: Path, env: dict[str, str]) -> str:
    """`dvc exp run --temp` with TEMP_POINT's overrides and LOOSE_GATE: its name."""
    results = json.loads((root / "sweeps" / "results" / "demo.json").read_text(encoding="utf-8"))
    argv = shlex.split(next(point["command"] for point in results["points"] if point["name"] == TEMP_POINT))
    sets = argv[argv.index("-n") + 2:] + [arg for setting in LOOSE_GATE for arg in ("-S", setting)]
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "dvc", "exp", "run", "--temp", *sets], cwd=root, env=env,
                          capture_output=True, text=True, timeout=1200)
    output = done.stdout + done.stderr
    print(f"\ntemp run: {time.monotonic() - started:.0f} s\n{output[-3000:]}")
    assert done.returncode == 0, output[-6000:]
    return re.search(r"Reproducing experiment '([^']+)'", output).group(1)


def _queue_log(root: Path, name: str) -> str:
    return subprocess.run([sys.executable, "-m", "dvc", "queue", "logs", name], cwd=root, capture_output=True,
                          text=True, check=True).stdout


def test_four_experiments_with_their_gate_decisions(demo_sweep) -> None:
    root = demo_sweep[0]
    shown = json.loads(subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=root,
                                      capture_output=True, text=True, check=True).stdout)
    experiments = {rev["name"]: rev["data"] for entry in shown for exp in entry.get("experiments") or []
                   for rev in exp["revs"]}
    assert sorted(experiments) == sorted([*NAMES, demo_sweep[3]])
    for name, data in ((name, experiments[name]) for name in NAMES):
        params = data["params"]["params.yaml"]["data"]
        assert f"L{params['student']['num_layers']}-h{round(100 * params['pruning']['ratio'])}" == name
        assert data["metrics"]["metrics/gate.json"]["data"]["decision"] in {"GO", "REVIEW", "NO-GO"}
    assert experiments["L2-h25"]["params"]["params.yaml"]["data"]["student"]["teacher_layers"] == [1, 4]
    results = json.loads((root / "sweeps" / "results" / "demo.json").read_text(encoding="utf-8"))
    assert {point["name"]: point["status"] for point in results["points"]} == dict.fromkeys(NAMES, "success")


def test_annotate_runs_once_and_distill_once_per_depth(demo_sweep) -> None:
    root = demo_sweep[0]
    logs = {name: _queue_log(root, name) for name in NAMES}
    ran = {name: set(re.findall(r"Running stage '(\w+)'", log)) for name, log in logs.items()}
    assert [name for name in NAMES if "annotate" in ran[name]] == ["L2-h25"]
    assert [name for name in NAMES if "distill" in ran[name]] == ["L2-h25", "L3-h25"]
    for name in ("L2-h50", "L3-h50"):
        assert "Stage 'annotate' is cached - skipping run" in logs[name]
        assert "Stage 'distill' is cached - skipping run" in logs[name]
        assert {"prune", "finetune", "evaluate", "bench", "gate"} <= ran[name]


def test_the_report_draws_the_front(demo_sweep) -> None:
    root = demo_sweep[0]
    page = (root / "reports" / "sweep-demo.html").read_text(encoding="utf-8")
    assert 'alt="sweep-demo_front.png" src="data:image/png;base64,' in page
    latency = page.split("<h3>Front on CPU p50")[1].split("</table>")[0]
    on_front = re.findall(r'<td class="name">(L\d-h\d+)</td>', latency)
    assert on_front and set(on_front) <= set(NAMES)
    assert "Sweep points that failed" not in page


def test_mlflow_parents_carry_the_sweep_and_its_figures(demo_sweep) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=demo_sweep[2])
    experiment = client.get_experiment_by_name("nerdistill")
    parents = client.search_runs([experiment.experiment_id], filter_string="tags.sweep = 'demo'")
    parents = [run for run in parents if "mlflow.parentRunId" not in run.data.tags]
    assert sorted(run.data.tags["dvc_exp_name"] for run in parents) == NAMES
    for run in parents:
        assert {"summary.f1", "summary.doc_p50_ms", "summary.disk_bytes", "summary.latency_ratio_vs_teacher_fp32",
                "summary.size_ratio_vs_teacher_fp32"} <= set(run.data.metrics)
        assert run.data.params["student.num_layers"] in {"2", "3"} and run.info.status == "FINISHED"


def test_queued_and_temporary_runs_reach_the_checkouts_store(demo_sweep) -> None:
    """Each experiment: one parent in the checkout's store, named after it and what it changed, its
    stages nested under it; the registry's champion is the export a GO gate judged, or absent."""
    import mlflow

    root, _, uri, temp_name = demo_sweep
    assert not list((root / ".dvc" / "tmp").rglob("mlflow.db"))
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("nerdistill").experiment_id], max_results=1000)
    parents = {run.data.tags["dvc_exp_name"]: run for run in runs if "mlflow.parentRunId" not in run.data.tags}
    assert sorted(parents) == sorted([*NAMES, temp_name])
    stages = {name: {run.data.tags["stage"] for run in runs
                     if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
              for name, parent in parents.items()}
    for name in NAMES:
        assert {"prune", "finetune", "export", "evaluate", "bench", "gate"} <= stages[name], name
    for name, parent in parents.items():
        assert parent.info.status == "FINISHED" and "summary.f1" in parent.data.metrics, name
        assert re.fullmatch(rf"{re.escape(name)} \S+=.+", parent.info.run_name), parent.info.run_name
        assert parent.data.tags["mlflow.note.content"].startswith(f"Pipeline execution `{name}`")
    # What it changed from the point it copies: the gate's bounds only.
    changed = parents[temp_name].info.run_name.split()[1:]
    assert sorted(pair.split("=")[0] for pair in changed) == sorted(pair.split("=")[0] for pair in LOOSE_GATE)

    go = {parent.info.run_id for parent in parents.values() if parent.data.tags["gate"] == "GO"}
    if go:
        champion = client.get_model_version_by_alias("nerdistill-student", "champion")
        assert champion.tags["parent_run_id"] in go
        assert client.get_run(champion.run_id).data.tags["stage"] == "export"
        # A version created from `models:/<id>` comes back from the alias lookup without its model_id.
        model_id = champion.model_id or champion.source.removeprefix("models:/")
        assert client.get_logged_model(model_id).tags["nerdistill.onnx_digest"]
    else:
        assert client.search_registered_models() == []
    # Training restored from DVC's run-cache (prune and evaluate have an uncached plain output: no entry).
    assert "gate" in stages[temp_name] and not {"annotate", "distill", "finetune"} & stages[temp_name]
