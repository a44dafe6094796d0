"""End to end: the real `dvc repro` and `dvc exp run` commands on a copy of this repository.

A tiny params profile (the demo teacher, a 3-layer student, one epoch each, few bench rounds)
and a 200-line corpus keep the nine stages to a few minutes on two cores. One module fixture
runs the pipeline once and three one-param experiments; each test reads what DVC, the metrics files and
the MLflow store say about that single execution.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from nerdistill.params_reader import params_from_dict

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
STAGES = ("annotate", "distill", "prune", "finetune", "export", "export_teacher", "evaluate", "bench", "gate")
CORPUS_LINES = 200
COMMAND_TIMEOUT_S = 600


@dataclass
class Pipeline:
    root: Path
    env: dict[str, str]
    tracking_uri: str
    outputs: dict[str, str] = field(default_factory=dict)   # command label -> DVC's stdout + stderr
    exp_names: dict[str, str] = field(default_factory=dict)  # command label -> experiment name
    seconds: dict[str, float] = field(default_factory=dict)

    def run(self, *args: str, label: str | None = None) -> str:
        started = time.monotonic()
        done = subprocess.run(list(args), cwd=self.root, env=self.env, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT_S)
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{' '.join(args)} failed ({done.returncode}):\n{output[-6000:]}"
        if label:
            self.outputs[label] = output
            self.seconds[label] = time.monotonic() - started
        return done.stdout


def _tiny_profile(params: dict, teacher_dir: Path) -> dict:
    params["teacher"].update(model_name=str(teacher_dir), max_length=128, stride=32, batch_size=16)
    params["student"].update(num_layers=3, teacher_layers=[1, 2, 4], max_length=128)
    params["train"].update(layer_map={"teacher": [2, 4], "student": [2, 3]})
    params["distill"].update(epochs=1, learning_rate=5e-4)
    params["finetune"].update(epochs=1, learning_rate=3e-4)
    params["pruning"].update(num_batches=2)
    # int8 adds two quantised variants and two fresh measuring processes: bench's own tests cover it.
    params["bench"].update(repeats=2, warmup=1, int8=False, max_retries=0)
    params["evaluate"].update(error_samples=5)
    params_from_dict(params)  # a profile the pipeline would refuse fails here, not in stage 1
    return params


def _copy_repo(dest: Path) -> None:
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split("\0")
    for name in [*tracked, ".dvc/config"]:
        source = REPO / name
        if name and source.is_file():  # ls-files also lists files deleted in the working tree
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def _ran(output: str) -> set[str]:
    return {stage for stage in STAGES if f"Running stage '{stage}'" in output}


def _skipped(output: str) -> set[str]:
    return {stage for stage in STAGES if f"Stage '{stage}' didn't change, skipping" in output}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, demo_teacher_dir: Path) -> Pipeline:
    root = tmp_path_factory.mktemp("e2e") / "repo"
    _copy_repo(root)
    corpus = root / "data" / "raw" / "corpus.txt"
    corpus.write_text("".join(corpus.read_text(encoding="utf-8").splitlines(keepends=True)[:CORPUS_LINES]),
                      encoding="utf-8")
    params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    (root / "params.yaml").write_text(yaml.safe_dump(_tiny_profile(params, demo_teacher_dir), sort_keys=False),
                                      encoding="utf-8")
    _git(root, "init", "-q", "-b", "main")
    _git(root, "config", "user.email", "e2e@example.invalid")
    _git(root, "config", "user.name", "e2e")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "tiny profile")

    tracking_uri = f"sqlite:///{root.parent / 'mlflow.db'}"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_TRACKING_URI": tracking_uri, "TOKENIZERS_PARALLELISM": "false"}
    env.pop("DVC_EXP_NAME", None)
    pipe = Pipeline(root=root, env=env, tracking_uri=tracking_uri)

    pipe.run("dvc", "repro", label="repro")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "baseline run")
    # A distill param's re-run (distill onward) is the sweep test's: its depths distill once each.
    for label, override in (("ratio", "pruning.ratio=0.5"), ("ffn", "pruning.ffn_ratio=0.25"),
                            ("vocab", "student.vocab=corpus")):
        pipe.run("dvc", "exp", "run", "-S", override, label=label)
        pipe.exp_names[label] = _exp_name(pipe.outputs[label])
        # Back to the committed baseline, so the next experiment changes one param only.
        _git(root, "checkout", "--", ".")
        pipe.run("dvc", "checkout", "--force")
    print(f"\ne2e timings (s): {pipe.seconds}")
    return pipe


def _exp_name(output: str) -> str:
    # DVC prints "Reproducing experiment 'NAME'" when it starts an experiment.
    marker = "Reproducing experiment '"
    assert marker in output, output[-3000:]
    return output.split(marker, 1)[1].split("'", 1)[0]


def test_repro_runs_every_stage_and_the_gate_decides(pipeline: Pipeline) -> None:
    assert _ran(pipeline.outputs["repro"]) == set(STAGES)
    for name in ("annotate", "distill", "prune", "finetune", "export", "export_teacher", "eval", "bench", "gate"):
        assert json.loads((pipeline.root / "metrics" / f"{name}.json").read_text())
    gate = json.loads((pipeline.root / "metrics" / "gate.json").read_text())
    assert gate["decision"] in {"GO", "REVIEW", "NO-GO"}
    # What ships is judged: the int8 ONNX export, scored by evaluate and timed by bench.
    assert (gate["model"], gate["variant"]) == ("onnx_int8", "cpu_onnx")
    assert gate["disk_bytes"] == json.loads((pipeline.root / "metrics" / "bench.json").read_text())[
        "models"]["onnx_int8"]["disk_bytes"]
    exported = json.loads((pipeline.root / "metrics" / "export.json").read_text())
    assert exported["int8"]["bytes"] < 0.35 * exported["fp32"]["bytes"]
    # No gold set in this profile: agreement has its own bound, never the gold one.
    assert [c["name"] for c in gate["checks"]] == ["agreement_drop_points", "f1", "export_fidelity", "latency_stable",
                                                   "cpu_latency_p50_ms", "latency_ratio_vs_teacher_int8",
                                                   "peak_memory_mb"]
    # The baseline a user would pick instead, the teacher's own int8 export, is timed and compared.
    assert gate["latency_ratio_vs_teacher_int8"] > 0 and gate["size_ratio_vs_teacher_int8"] > 0
    assert all(isinstance(c["passed"], bool) and isinstance(c["value"], float) for c in gate["checks"])


def test_pruning_ratio_reruns_prune_onward_only(pipeline: Pipeline) -> None:
    output = pipeline.outputs["ratio"]
    assert _skipped(output) == {"annotate", "distill", "export_teacher"}
    assert _ran(output) == {"prune", "finetune", "export", "evaluate", "bench", "gate"}


def test_ffn_ratio_reruns_prune_onward_only(pipeline: Pipeline) -> None:
    output = pipeline.outputs["ffn"]
    assert _skipped(output) == {"annotate", "distill", "export_teacher"}
    assert _ran(output) == {"prune", "finetune", "export", "evaluate", "bench", "gate"}


def test_vocabulary_reruns_export_onward_only(pipeline: Pipeline) -> None:
    output = pipeline.outputs["vocab"]
    assert _skipped(output) == {"annotate", "distill", "prune", "finetune", "export_teacher"}
    assert _ran(output) == {"export", "evaluate", "bench", "gate"}


def test_exp_show_and_metrics_diff_compare_the_experiments(pipeline: Pipeline) -> None:
    rows = list(csv.DictReader(io.StringIO(pipeline.run("dvc", "exp", "show", "--csv"))))
    assert {"pruning.ratio", "pruning.ffn_ratio", "decision"} <= set(rows[0])
    by_name = {row["Experiment"]: row for row in rows}
    ratio, ffn = pipeline.exp_names["ratio"], pipeline.exp_names["ffn"]
    assert by_name[ratio]["pruning.ratio"] == "0.5"
    assert by_name[ffn]["pruning.ffn_ratio"] == "0.25"
    assert by_name[ffn]["pruning.ratio"] == "0.25"

    # --all: the tiny students may tie on F1, and a tie is still a row of the comparison.
    diff = json.loads(pipeline.run("dvc", "metrics", "diff", ratio, ffn, "--all", "--json"))
    eval_keys, bench_keys = set(diff["metrics/eval.json"]), set(diff["metrics/bench.json"])
    assert "agreement.final.f1" in eval_keys
    assert "models.final.variants.cpu_fp32.doc_p50_ms" in bench_keys


def test_mlflow_has_one_parent_per_execution_with_its_gate(pipeline: Pipeline) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=pipeline.tracking_uri)
    experiment = client.get_experiment_by_name("nerdistill")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 4  # dvc repro, then three experiments
    assert {p.data.params["pruning.ratio"] for p in parents} == {"0.25", "0.5"}
    assert all(p.data.tags.get("gate") in {"GO", "REVIEW", "NO-GO"} for p in parents)
    assert all(p.info.status == "FINISHED" for p in parents)
    names = {p.data.tags["mlflow.runName"] for p in parents}
    # An experiment's parent is named after it, then what it changed.
    assert all(any(name.startswith(pipeline.exp_names[kind] + " ") for name in names) for kind in ("ratio", "ffn"))
    assert any(name.startswith("main@") for name in names)  # dvc repro: branch@commit
    parent_ids = {p.info.run_id for p in parents}
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == parent_ids
    # 9 stages, then 6 (prune onward), 6 (prune onward), 4 (export onward).
    assert len(children) == 9 + 6 + 6 + 4
    ratio_parent = next(p for p in parents if p.data.tags.get("dvc_exp_name") == pipeline.exp_names["ratio"])
    stages = {c.data.tags["stage"] for c in children if c.data.tags["mlflow.parentRunId"] == ratio_parent.info.run_id}
    assert stages == {"prune", "finetune", "export", "evaluate", "bench", "gate"}
    filtered = client.search_runs([experiment.experiment_id],
                                  filter_string="params.`pruning.ratio` = '0.5' and tags.gate != ''")
    assert [r.info.run_id for r in filtered] == [ratio_parent.info.run_id]


def test_report_compares_the_pipeline_experiments(pipeline: Pipeline, tmp_path: Path) -> None:
    from nerdistill.report import write_report

    page = write_report(pipeline.root, tmp_path / "report.html").read_text(encoding="utf-8")
    for name in (*pipeline.exp_names.values(), "workspace", "main"):
        assert f'>{name}</td>' in page
    for png in ("distill_history", "head_importance", "finetune_history", "confusion", "latency"):
        assert f'alt="{png}.png" src="data:image/png;base64,' in page
    gate = json.loads((pipeline.root / "metrics" / "gate.json").read_text())
    assert f'<td class="{gate["decision"]}">{gate["decision"]}</td>' in page
    assert "http://" not in page and "https://" not in page
