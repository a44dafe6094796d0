"""Distributed runs on CPU (gloo): annotate and distill under `torchrun` with two processes."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from nerdistill.params_reader import params_from_dict
from nerdistill.stages import annotate

TORCHRUN = Path(sys.executable).parent / "torchrun"
ANNOTATED_FILES = ("train.jsonl", "val.jsonl", "test.jsonl", "label2id.json", "transitions.json")


def offline_env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("DVC_EXP_NAME", None)
    return env


def stage_runs(env: dict[str, str], stage: str) -> list:
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    return mlflow.search_runs(experiment_names=["nerdistill"], output_format="list",
                              filter_string=f"tags.stage = '{stage}'")


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """The arithmetic of a torchrun process (OMP_NUM_THREADS=1) in this one, for the block only."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def test_annotate_under_torchrun_writes_what_one_process_writes(tmp_path: Path, random_teacher_dir: Path,
                                                                corpus_path: Path) -> None:
    # Batches of one line make chunks of 32: three chunks, so both processes tag and the last round is uneven.
    lines = corpus_path.read_text(encoding="utf-8").splitlines()[:80]
    (tmp_path / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    teacher = {"model_name": str(random_teacher_dir), "max_length": 32, "stride": 8, "batch_size": 1}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"teacher": teacher}))
    with one_thread():
        alone = annotate.run(params_from_dict({"teacher": teacher}), tmp_path / "corpus.txt", tmp_path / "one")
    env = offline_env(tmp_path)
    two = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "nerdistill.cli", "annotate",
                          "--corpus", "corpus.txt", "--out", "two", "--metrics", "two.json"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    for name in ANNOTATED_FILES:
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    assert json.loads((tmp_path / "two.json").read_text()) == alone
    assert alone["windowed_lines"] > 0 and alone["phrases"]["total"] == len(set(lines))
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".")) == []
    assert len(stage_runs(env, "annotate")) == 1, "the second process tracks nothing"


@pytest.mark.slow
def test_torchrun_two_processes_train_one_student_tracked_once(tmp_path: Path, demo_teacher_dir: Path,
                                                               annotated_dir: Path) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "teacher": {"model_name": str(demo_teacher_dir), "max_length": 128, "stride": 32},
        "student": {"num_layers": 2, "teacher_layers": [1, 4], "max_length": 128},
        "train": {"batch_size": 8, "layer_map": {"teacher": [4], "student": [2]}},
        "distill": {"epochs": 1, "max_steps": 4, "learning_rate": 5e-4}}))
    env = offline_env(tmp_path)
    done = subprocess.run(
        [str(TORCHRUN), "--nproc_per_node=2", "-m", "nerdistill.cli", "distill",
         "--data", str(annotated_dir), "--out", "student", "--metrics", "distill.json", "--history", "h.csv",
         "--components", "c.csv", "--plot", "h.png", "--checkpoints", "ckpt"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-5000:]
    assert (tmp_path / "student" / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".student")) == []
    assert (tmp_path / "distill.json").is_file() and (tmp_path / "h.csv").is_file()
    assert len(stage_runs(env, "distill")) == 1
