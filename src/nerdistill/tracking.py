"""The one place that opens MLflow runs, and the DVC metrics writer.

Every stage is its own process (DVC runs them one by one), so a pipeline execution is tied
together by a key: the DVC experiment name when `dvc exp run` sets DVC_EXP_NAME, else the git
commit plus a hash of the params. The first stage of an execution creates the parent run with
that key as a tag; later stages find it and open their nested run under it explicitly.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from nerdistill.io import write_json
from nerdistill.params import Params

log = logging.getLogger(__name__)

EXPERIMENT = "nerdistill"
DEFAULT_URI = "sqlite:///mlflow.db"
KEY_TAG = "nerdistill.pipeline_key"

# Telemetry off unless the user turned it on explicitly.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "nogit"
    return out.stdout.strip()


def params_hash(params: Params) -> str:
    blob = json.dumps(params.flat(), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def pipeline_key(params: Params) -> str:
    exp_name = os.environ.get("DVC_EXP_NAME")
    if exp_name:
        return f"exp:{exp_name}"
    return f"{git_commit()[:12]}:{params_hash(params)}"


def flatten_metrics(tree: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested metrics dict as `a.b.c` -> float; strings and lists are left out
    (they stay in the JSON) and NaN is skipped because MLflow rejects it."""
    flat: dict[str, float] = {}
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, f"{key}."))
        elif isinstance(value, bool):
            flat[key] = float(value)
        elif isinstance(value, (int, float)) and math.isfinite(value):
            flat[key] = float(value)
    return flat


def log_metrics(metrics: dict[str, Any], step: int | None = None) -> None:
    """Log to the active stage run; a no-op outside one (unit tests, library use)."""
    import mlflow

    if mlflow.active_run() is None:
        return
    mlflow.log_metrics(flatten_metrics(metrics), step=step)


@dataclass
class StageRun:
    stage: str
    run_id: str
    parent_id: str

    def write_metrics(self, path: str | Path, metrics: dict[str, Any], to_parent: bool = False) -> None:
        """Write the DVC metrics JSON and mirror its numeric leaves to MLflow.

        `to_parent` also copies them to the parent run (prefixed by the stage), so the final
        eval/bench/gate figures of an execution sit on one row of the MLflow table."""
        import mlflow

        write_json(path, metrics)
        flat = flatten_metrics(metrics)
        mlflow.log_metrics(flat, run_id=self.run_id)
        if to_parent:
            mlflow.log_metrics({f"{self.stage}.{k}": v for k, v in flat.items()}, run_id=self.parent_id)
        mlflow.log_artifact(str(path), run_id=self.run_id)

    def log_artifact(self, path: str | Path) -> None:
        import mlflow

        path = Path(path)
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path=path.name, run_id=self.run_id)
        elif path.exists():
            mlflow.log_artifact(str(path), run_id=self.run_id)
        else:
            log.warning("not logging missing artifact %s", path)

    def set_parent_tag(self, key: str, value: str) -> None:
        import mlflow

        mlflow.MlflowClient().set_tag(self.parent_id, key, value)


def _experiment_id(client: Any) -> str:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    artifacts = None
    if tracking_uri().startswith("sqlite:"):
        # Keep artifacts beside the SQLite store instead of MLflow's cwd-relative default.
        artifacts = (Path.cwd() / "mlartifacts").resolve().as_uri()
    return client.create_experiment(EXPERIMENT, artifact_location=artifacts)


def find_or_create_parent(params: Params) -> tuple[str, str]:
    """(experiment id, parent run id) for this pipeline execution."""
    import mlflow

    client = mlflow.MlflowClient()
    experiment_id = _experiment_id(client)
    key = pipeline_key(params)
    found = client.search_runs([experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{key}'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    if found:
        return experiment_id, found[0].info.run_id
    tags = {KEY_TAG: key, "git_commit": git_commit()}
    exp_name = os.environ.get("DVC_EXP_NAME")
    if exp_name:
        tags["dvc_exp_name"] = exp_name
    run = client.create_run(experiment_id, run_name=exp_name or f"pipeline {key}", tags=tags)
    for name, value in params.flat().items():
        client.log_param(run.info.run_id, name, value)
    client.set_terminated(run.info.run_id)
    return experiment_id, run.info.run_id


@contextlib.contextmanager
def stage_run(stage: str, params: Params, section_names: tuple[str, ...] = ()) -> Iterator[StageRun]:
    """Open the nested MLflow run of one stage under the execution's parent run."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    experiment_id, parent_id = find_or_create_parent(params)
    stage_params = {k: v for k, v in params.flat().items()
                    if not section_names or k.split(".", 1)[0] in section_names}
    with mlflow.start_run(experiment_id=experiment_id, run_name=stage, nested=True,
                          parent_run_id=parent_id, tags={"stage": stage}) as run:
        mlflow.log_params(stage_params)
        log.info("MLflow: stage run %s under parent %s (%s)", run.info.run_id, parent_id, tracking_uri())
        yield StageRun(stage=stage, run_id=run.info.run_id, parent_id=parent_id)
