"""What a reviewer sees: a real `mlflow server` on the test store, read through its REST API."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from nerdistill import tracking
from nerdistill.params_reader import params_from_dict

STAGES = ("annotate", "distill", "prune", "finetune", "evaluate", "bench", "gate")
START_TIMEOUT_S = 90


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _call(base: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{base}{path}", data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def server(mlflow_workdir: Path):
    port = _free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    bindir = Path(sys.executable).parent
    proc = subprocess.Popen([str(bindir / "mlflow"), "server", "--backend-store-uri", os.environ["MLFLOW_TRACKING_URI"],
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None:
                    pytest.fail(f"mlflow server exited: {proc.stderr.read()[-3000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"mlflow server not up after {START_TIMEOUT_S} s")
                time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_server_shows_one_parent_with_its_stage_runs_and_the_gate(mlflow_workdir, server):
    params = params_from_dict({"pruning": {"ratio": 0.5}})
    for stage in STAGES:
        with tracking.stage_run(stage, params, last=stage == "gate") as run:
            if stage == "gate":
                run.set_parent_tag("gate", "REVIEW")
                run.log_summary({"f1": 0.87, "doc_p50_ms": 4.4})

    experiment = _call(server, f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={tracking.EXPERIMENT}")
    tags = {tag["key"]: tag["value"] for tag in experiment["experiment"].get("tags", [])}
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    runs = _call(server, "/api/2.0/mlflow/runs/search",
                 {"experiment_ids": [experiment["experiment"]["experiment_id"]], "max_results": 100})["runs"]
    tags_of = {run["info"]["run_id"]: {t["key"]: t["value"] for t in run["data"].get("tags", [])} for run in runs}
    parents = [run for run in runs if "mlflow.parentRunId" not in tags_of[run["info"]["run_id"]]]
    assert len(parents) == 1
    parent = parents[0]["info"]
    parent_tags = tags_of[parent["run_id"]]
    assert parent_tags["gate"] == "REVIEW" and parent_tags["mlflow.note.content"]
    assert {metric["key"] for metric in parents[0]["data"]["metrics"]} == {"summary.f1", "summary.doc_p50_ms"}
    assert parent["status"] == "FINISHED"
    children = [run for run in runs if tags_of[run["info"]["run_id"]].get("mlflow.parentRunId") == parent["run_id"]]
    assert sorted(tags_of[run["info"]["run_id"]]["stage"] for run in children) == sorted(STAGES)
    assert int(parent["end_time"]) >= max(int(run["info"]["end_time"]) for run in children)
    assert int(parent["start_time"]) <= min(int(run["info"]["start_time"]) for run in children)
