"""The one place that opens MLflow runs, and the DVC metrics writer.

Every stage is its own process (DVC runs them one by one), so a pipeline execution is tied together
by a key: the DVC experiment name when `dvc exp run` sets DVC_EXP_NAME, else the git commit plus a
hash of the params. The first stage creates the parent run with that key as a tag; later stages find
it and nest their run under it. Each stage marks the parent running when it starts, then finished
(or failed) with its own end time, so the last stage leaves the parent's true duration and outcome.
Several executions may share a store (`dvc queue start -j N`): parent-run writes happen under one
file lock per store, so two processes never create two parents for one key nor race on a tag.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import yaml

from nerdistill.io import write_json
from nerdistill.params import Params, ParamsError
from nerdistill.params_reader import flat, params_from_dict, select, stage_param_keys

log = logging.getLogger(__name__)

EXPERIMENT = "nerdistill"
DEFAULT_URI = "sqlite:///mlflow.db"
KEY_TAG = "nerdistill.pipeline_key"
# Set by `nerdistill sweep` for the experiments it queues: the parent run's `sweep` tag.
SWEEP_ENV = "NERDISTILL_SWEEP"
# MLflow 3 opens an experiment on its GenAI overview unless it is tagged as model training.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
MAX_NAMED_CHANGES = 4  # params that differ from the shipped ones, spelled out in a run name

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def is_main_process() -> bool:
    """False in the extra processes of a distributed run (torchrun, accelerate launch set RANK):
    only the main one tracks, writes outputs and saves models."""
    return int(os.environ.get("RANK", "0")) == 0


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)


def absolute_uri(root: Path) -> str:
    """The store for runs that execute in a scratch copy of `root` (queued DVC experiments): the
    tracking URI with a relative SQLite path made absolute against `root`, as it would resolve there."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_absolute():
        return f"sqlite:///{(root / uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def git_commit() -> str:
    return _git("rev-parse", "HEAD") or "nogit"


def shipped_changes(params: Params) -> dict[str, Any]:
    """The params that differ from params.yaml as committed at HEAD (empty outside git)."""
    committed = _git("show", "HEAD:params.yaml")
    if committed is None:
        return {}
    try:
        shipped = flat(params_from_dict(yaml.safe_load(committed) or {}))
    except (yaml.YAMLError, ParamsError):
        return {}
    return {key: value for key, value in flat(params).items() if shipped.get(key) != value}


def run_name(params: Params) -> str:
    """What a reviewer reads in the runs table: the DVC experiment name, else branch@commit and
    the params that differ from the shipped ones (`main@32369e5 pruning.ratio=0.5`)."""
    exp_name = os.environ.get("DVC_EXP_NAME")
    if exp_name:
        return exp_name
    branch = _git("rev-parse", "--abbrev-ref", "HEAD") or "nogit"
    name = f"{branch}@{git_commit()[:7]}"
    changes = [f"{key}={value}" for key, value in sorted(shipped_changes(params).items())]
    if len(changes) > MAX_NAMED_CHANGES:
        changes = changes[:MAX_NAMED_CHANGES] + [f"+{len(changes) - MAX_NAMED_CHANGES} more"]
    return " ".join([name, *changes]) if changes else f"{name} (shipped params)"


def params_hash(params: Params) -> str:
    blob = json.dumps(flat(params), sort_keys=True, default=str)
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
            with parent_lock():
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

        with parent_lock():
            mlflow.MlflowClient().set_tag(self.parent_id, key, value)


def _sqlite_file() -> Path | None:
    uri = tracking_uri()
    return Path(uri.removeprefix("sqlite:///")).resolve() if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def parent_lock() -> Iterator[None]:
    """Exclusive lock over parent-run writes for this store: beside a SQLite file, else (a server)
    in the temp folder, which serialises the processes of one machine, as `dvc queue` runs them."""
    store = _sqlite_file()
    if store is not None:
        path = store.with_name(store.name + ".lock")
    else:
        digest = hashlib.sha256(tracking_uri().encode()).hexdigest()[:16]
        path = Path(tempfile.gettempdir()) / f"nerdistill-mlflow-{digest}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _experiment_id(client: Any) -> str:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        store = _sqlite_file()
        # Artifacts beside the SQLite store, not in MLflow's cwd-relative default: a `dvc exp run
        # --temp` stage runs in a scratch folder that is deleted afterwards.
        artifacts = (store.parent / "mlartifacts").as_uri() if store is not None else None
        return client.create_experiment(EXPERIMENT, artifact_location=artifacts, tags=EXPERIMENT_KIND)
    for key, value in EXPERIMENT_KIND.items():
        if experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def find_or_create_parent(params: Params) -> tuple[str, str]:
    """(experiment id, parent run id) for this pipeline execution, created once per key even when
    several processes ask at the same time."""
    import mlflow
    from mlflow.entities import Param

    with parent_lock():
        # Inside the lock: the first client on a new SQLite store creates its schema.
        client = mlflow.MlflowClient()
        experiment_id = _experiment_id(client)
        key = pipeline_key(params)
        found = client.search_runs([experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{key}'",
                                   order_by=["attributes.start_time ASC"], max_results=1)
        if found:
            client.update_run(found[0].info.run_id, status="RUNNING")
            return experiment_id, found[0].info.run_id
        tags = {KEY_TAG: key, "git_commit": git_commit()}
        exp_name = os.environ.get("DVC_EXP_NAME")
        if exp_name:
            tags["dvc_exp_name"] = exp_name
        if os.environ.get(SWEEP_ENV):
            tags["sweep"] = os.environ[SWEEP_ENV]
        run = client.create_run(experiment_id, run_name=run_name(params), tags=tags)
        client.log_batch(run.info.run_id,
                         params=[Param(name, str(value)) for name, value in flat(params).items()])
        return experiment_id, run.info.run_id


def _end_parent(parent_id: str, status: str) -> None:
    import mlflow

    with parent_lock():
        mlflow.MlflowClient().set_terminated(parent_id, status=status, end_time=int(time.time() * 1000))


@contextlib.contextmanager
def stage_run(stage: str, params: Params, keys: Iterable[str] | None = None) -> Iterator[StageRun]:
    """Open the nested MLflow run of one stage under the execution's parent run, logging the
    params under `keys` (the stage's dvc.yaml params; None: all of them)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    experiment_id, parent_id = find_or_create_parent(params)
    stage_params = flat(params) if keys is None else select(params, keys)
    status = "FAILED"
    try:
        with mlflow.start_run(experiment_id=experiment_id, run_name=stage, nested=True,
                              parent_run_id=parent_id, tags={"stage": stage}) as run:
            mlflow.log_params(stage_params)
            log.info("MLflow: stage run %s under parent %s (%s)", run.info.run_id, parent_id, tracking_uri())
            yield StageRun(stage=stage, run_id=run.info.run_id, parent_id=parent_id)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        _end_parent(parent_id, status)


def tracked_stage(stage: str, params: Params, params_file: Path, metrics_path: Path, call: Callable[[], dict],
                  artifacts: Iterable[Path] = (), to_parent: bool = False,
                  parent_tags: Callable[[dict], dict[str, str]] = lambda metrics: {}) -> dict:
    """`call` inside the stage's MLflow run, then its metrics file (on the parent too when `to_parent`),
    artifacts and `parent_tags(metrics)`; only the main process of a distributed run tracks and writes."""
    if not is_main_process():
        return call()
    with stage_run(stage, params, _declared_keys(params_file, stage)) as run:
        metrics = call()
        run.write_metrics(metrics_path, metrics, to_parent=to_parent)
        for artifact in artifacts:
            run.log_artifact(artifact)
        for key, value in parent_tags(metrics).items():
            run.set_parent_tag(key, value)
    return metrics


def _declared_keys(params_file: Path, stage: str) -> tuple[str, ...] | None:
    """The keys dvc.yaml beside the params file declares for `stage` (what its run logs); all outside DVC."""
    dvc_yaml = Path(params_file).parent / "dvc.yaml"
    if not dvc_yaml.is_file():
        log.warning("%s not found: logging every param on the %s run", dvc_yaml, stage)
        return None
    return stage_param_keys(dvc_yaml, stage)
