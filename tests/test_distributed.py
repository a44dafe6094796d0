"""Distributed training through Trainer's own engine: `torchrun` with two CPU processes (gloo)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

pytestmark = pytest.mark.slow


def test_torchrun_two_processes_train_one_student_tracked_once(tmp_path: Path, demo_teacher_dir: Path,
                                                               annotated_dir: Path) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "teacher": {"model_name": str(demo_teacher_dir), "max_length": 128, "stride": 32},
        "student": {"num_layers": 2, "teacher_layers": [1, 4], "max_length": 128},
        "train": {"batch_size": 8, "layer_map": {"teacher": [4], "student": [2]}},
        "distill": {"epochs": 1, "max_steps": 4, "learning_rate": 5e-4}}))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("DVC_EXP_NAME", None)
    torchrun = Path(sys.executable).parent / "torchrun"
    done = subprocess.run(
        [str(torchrun), "--nproc_per_node=2", "-m", "nerdistill.cli", "distill",
         "--data", str(annotated_dir), "--out", "student", "--metrics", "distill.json", "--history", "h.csv",
         "--components", "c.csv", "--plot", "h.png", "--checkpoints", "ckpt"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-5000:]
    assert (tmp_path / "student" / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".student")) == []
    assert (tmp_path / "distill.json").is_file() and (tmp_path / "h.csv").is_file()
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["nerdistill"], output_format="list",
                              filter_string="tags.stage = 'distill'")
    assert len(runs) == 1
