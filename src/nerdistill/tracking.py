"""The one place that opens MLflow runs, and the DVC metrics writer.

Every stage is its own process (DVC runs them one by one), so a pipeline execution is tied together
by a key: the DVC experiment name when `dvc exp run` sets DVC_EXP_NAME, else the git commit plus a
hash of the params. The first stage creates the parent run with that key as a tag, a name saying
what changed and a description; later stages find it and nest their run under it. The parent stays
RUNNING until the last stage (the gate) finishes it, or a failed stage marks it failed.
Several executions may share a store (`dvc queue start -j N`): parent-run and registry writes happen
under one file lock per store, so two processes never create two parents for one key nor race on a tag.

The store is the checkout's: `dvc exp run --temp` and `dvc queue` run stages in a scratch copy that
is deleted afterwards, but DVC hands every stage the original repository's root in DVC_ROOT, and a
relative SQLite path (the default `sqlite:///mlflow.db`, or one set in MLFLOW_TRACKING_URI) is
resolved there. Any other URI (a server) is used as set.
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
SQLITE = "sqlite:///"
# Set by DVC for every stage command: the repository's root, the original one for temp and queued runs.
ROOT_ENV = "DVC_ROOT"
KEY_TAG = "nerdistill.pipeline_key"
COMMIT_TAG = "git_commit"
# The parent's copy of the gate's figures of the judged variant: a few columns for the runs table.
SUMMARY_PREFIX = "summary."
# What ships, as an MLflow model: the int8 export's digest ties it to the gate that judged it.
DIGEST_TAG = "nerdistill.onnx_digest"
ONNX_DIGEST = "onnx_digest"  # the same digest in export.json's int8 entry
REGISTERED_MODEL = "nerdistill-student"
CHAMPION = "champion"
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
    """MLFLOW_TRACKING_URI (default `sqlite:///mlflow.db`), a relative SQLite path made absolute against
    the checkout's root (DVC_ROOT inside a DVC stage, else the working folder)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    path = Path(uri.removeprefix(SQLITE))
    if not uri.startswith(SQLITE) or path.is_absolute():
        return uri
    return f"{SQLITE}{(Path(os.environ.get(ROOT_ENV) or '.') / path).resolve()}"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def git_commit() -> str:
    return _git("rev-parse", "HEAD") or "nogit"


def shipped_changes(params: Params) -> dict[str, Any]:
    """The params that differ from params.yaml as committed at HEAD (empty outside git). In a DVC
    experiment's scratch copy HEAD is the experiment's baseline commit."""
    committed = _git("show", "HEAD:params.yaml")
    if committed is None:
        return {}
    try:
        shipped = flat(params_from_dict(yaml.safe_load(committed) or {}))
    except (yaml.YAMLError, ParamsError):
        return {}
    return {key: value for key, value in flat(params).items() if shipped.get(key) != value}


def execution_label() -> str:
    """The DVC experiment name, else branch@commit (`main@32369e5`)."""
    exp_name = os.environ.get("DVC_EXP_NAME")
    if exp_name:
        return exp_name
    return f"{_git('rev-parse', '--abbrev-ref', 'HEAD') or 'nogit'}@{git_commit()[:7]}"


@dataclass(frozen=True)
class Changes:
    """What a new execution changed: from `reference` (an earlier parent run's name, or None for the
    committed params.yaml), the keys and values that differ."""
    reference: str | None
    values: dict[str, Any]


def closest_changes(params: Params, earlier: Iterable[tuple[str, dict[str, str]]]) -> Changes:
    """The fewest changes from the committed params or from an earlier execution (name, its logged
    params) of the same commit: after the demo profile's dozen overrides, an experiment that also
    sets pruning.ratio=0.15 reads as that one change from the demo's run. A run with the very same
    params as an earlier one is described from the committed params."""
    best = Changes(None, shipped_changes(params))
    mine = flat(params)
    for name, logged in earlier:
        differ = {key: value for key, value in mine.items() if logged.get(key) != str(value)}
        if differ and (not best.values or len(differ) < len(best.values)):
            best = Changes(name, differ)
    return best


def _spelled(values: dict[str, Any], limit: int | None = None) -> str:
    """`key=value` pairs, a path value by its last part (the demo teacher's absolute folder)."""
    pairs = [f"{key}={Path(value).name if isinstance(value, str) and os.sep in value else value}"
             for key, value in sorted(values.items())]
    if limit is not None and len(pairs) > limit:
        pairs = pairs[:limit] + [f"+{len(pairs) - limit} more"]
    return " ".join(pairs)


def run_name(changes: Changes) -> str:
    """What a reviewer reads in the runs table: the execution and what it changed
    (`curly-coof pruning.ratio=0.15`, `main@32369e5 (shipped params)`)."""
    label = execution_label()
    return f"{label} {_spelled(changes.values, MAX_NAMED_CHANGES)}" if changes.values else f"{label} (shipped params)"


def run_description(changes: Changes, params: Params) -> str:
    """The parent's description (Markdown, the UI's Description box): every change, from what."""
    origin = f"the run `{changes.reference}`" if changes.reference else "the committed params.yaml"
    lines = [f"Pipeline execution `{execution_label()}` on commit {git_commit()[:7]}."]
    if changes.values:
        lines.append(f"Changed from {origin}: `{_spelled(changes.values)}`.")
    if changes.reference:
        shipped = shipped_changes(params)
        lines.append(f"From the committed params.yaml: `{_spelled(shipped)}`." if shipped else
                     "Otherwise the committed params.yaml.")
    lines.append("The gate's decision is the `gate` tag and its figures the `summary.*` metrics; each stage "
                 "that ran is a nested run (a stage DVC restored from its cache has none).")
    return "\n\n".join(lines)


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
    experiment_id: str

    def write_metrics(self, path: str | Path, metrics: dict[str, Any]) -> None:
        """Write the DVC metrics JSON and mirror its numeric leaves to the stage's MLflow run (the
        parent holds only the gate's short `summary.*` set: `log_summary`)."""
        import mlflow

        write_json(path, metrics)
        mlflow.log_metrics(flatten_metrics(metrics), run_id=self.run_id)
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

    def log_summary(self, figures: dict[str, Any]) -> None:
        """The judged variant's figures on the parent as `summary.*`: the runs table's few columns."""
        import mlflow

        with parent_lock():
            mlflow.log_metrics(flatten_metrics(figures, SUMMARY_PREFIX), run_id=self.parent_id)

    def judge_model(self, digest: str, figures: dict[str, Any], promote: bool) -> str | None:
        """Link `figures` to the logged model of the export whose digest is `digest` (what this stage
        judged); when `promote`, register it as REGISTERED_MODEL and move CHAMPION to it. The version
        the alias now names, else None."""
        import mlflow

        client = mlflow.MlflowClient()
        model = _logged_model(client, self.experiment_id, digest)
        if model is None:
            log.warning("MLflow: no logged model with %s = %s in %s (its export ran against another store or "
                        "before models were logged): nothing linked or registered; re-run export (dvc repro -f "
                        "export) to log it", DIGEST_TAG, digest, tracking_uri())
            return None
        mlflow.log_metrics(flatten_metrics(figures), run_id=self.run_id, model_id=model.model_id)
        if not promote:
            return None
        with parent_lock():
            version = _version_of(client, model) or client.create_model_version(
                REGISTERED_MODEL, source=f"models:/{model.model_id}", run_id=model.source_run_id,
                model_id=model.model_id, tags={"parent_run_id": self.parent_id, "gate_run_id": self.run_id})
            client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION, version.version)
        log.info("MLflow: %s version %s is now @%s", REGISTERED_MODEL, version.version, CHAMPION)
        return version.version


def file_digest(path: Path) -> str:
    """The first 16 hex digits of the file's SHA-256: enough to tell exports apart, short in a table."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def onnx_signature(model: Any) -> Any:
    """The MLflow signature of an ONNX graph: its named tensors, dtype and shape (-1 on dynamic axes)."""
    import onnx
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    def schema(values: Any) -> Schema:
        return Schema([TensorSpec(onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type),
                                  tuple(dim.dim_value or -1 for dim in value.type.tensor_type.shape.dim), value.name)
                       for value in values])

    return ModelSignature(inputs=schema(model.graph.input), outputs=schema(model.graph.output))


def log_onnx_model(model_file: Path) -> str:
    """Log the ONNX export holding `model_file` as an MLflow model of the active run (onnx flavour, with
    its signature; the folder's other files, the CRF and tokenizer, beside it), tagged with the file's
    digest, which is returned: the gate finds the model it judged by it."""
    import importlib.metadata

    import mlflow.onnx
    import onnx

    digest = file_digest(model_file)
    model = onnx.load(str(model_file))
    extra = sorted(str(path) for path in model_file.parent.iterdir() if path.is_file() and path != model_file)
    # Pinned requirements: MLflow would otherwise infer them by loading the model in a subprocess.
    requirements = [f"{name}=={importlib.metadata.version(name)}" for name in ("onnx", "onnxruntime")]
    info = mlflow.onnx.log_model(model, name=model_file.parent.name, signature=onnx_signature(model),
                                 pip_requirements=requirements, extra_files=extra, save_as_external_data=False,
                                 tags={DIGEST_TAG: digest})
    log.info("MLflow: logged model %s (%s = %s)", info.model_id, DIGEST_TAG, digest)
    return digest


def _logged_model(client: Any, experiment_id: str, digest: str) -> Any | None:
    found = client.search_logged_models([experiment_id], filter_string=f"tags.`{DIGEST_TAG}` = '{digest}'",
                                        order_by=[{"field_name": "creation_time", "ascending": False}],
                                        max_results=1)
    return found[0] if found else None


def _version_of(client: Any, model: Any) -> Any | None:
    """The registered version of a logged model (a second GO on the same export moves the alias only)."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(REGISTERED_MODEL, description="The int8 ONNX student the gate judged; "
                                       f"@{CHAMPION} is the latest GO.")
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    versions = client.search_model_versions(f"name = '{REGISTERED_MODEL}'")
    return next((version for version in versions if version.source == f"models:/{model.model_id}"), None)


def _sqlite_file() -> Path | None:
    uri = tracking_uri()
    return Path(uri.removeprefix(SQLITE)) if uri.startswith(SQLITE) else None


@contextlib.contextmanager
def parent_lock() -> Iterator[None]:
    """Exclusive lock over parent-run and registry writes for this store: beside a SQLite file, else (a
    server) in the temp folder, which serialises the processes of one machine, as `dvc queue` runs them."""
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


def _earlier_parents(client: Any, experiment_id: str, commit: str) -> list[tuple[str, dict[str, str]]]:
    """(name, params) of the parents of earlier executions of this commit (stage runs have no commit tag)."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.{COMMIT_TAG} = '{commit}'",
                              order_by=["attributes.start_time DESC"], max_results=200)
    return [(run.info.run_name, run.data.params) for run in runs]


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
        changes = closest_changes(params, _earlier_parents(client, experiment_id, git_commit()))
        tags = {KEY_TAG: key, COMMIT_TAG: git_commit(), "mlflow.note.content": run_description(changes, params)}
        exp_name = os.environ.get("DVC_EXP_NAME")
        if exp_name:
            tags["dvc_exp_name"] = exp_name
        if os.environ.get(SWEEP_ENV):
            tags["sweep"] = os.environ[SWEEP_ENV]
        run = client.create_run(experiment_id, run_name=run_name(changes), tags=tags)
        client.log_batch(run.info.run_id,
                         params=[Param(name, str(value)) for name, value in flat(params).items()])
        return experiment_id, run.info.run_id


def _end_parent(parent_id: str, status: str) -> None:
    import mlflow

    with parent_lock():
        mlflow.MlflowClient().set_terminated(parent_id, status=status, end_time=int(time.time() * 1000))


@contextlib.contextmanager
def stage_run(stage: str, params: Params, keys: Iterable[str] | None = None, last: bool = False
              ) -> Iterator[StageRun]:
    """Open the nested MLflow run of one stage under the execution's parent run, logging the
    params under `keys` (the stage's dvc.yaml params; None: all of them). The parent stays RUNNING
    after the stage, unless it failed or is the `last` of the pipeline."""
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
            yield StageRun(stage=stage, run_id=run.info.run_id, parent_id=parent_id, experiment_id=experiment_id)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if last or status != "FINISHED":
            _end_parent(parent_id, status)


def tracked_stage(stage: str, params: Params, params_file: Path, metrics_path: Path, call: Callable[[], dict],
                  artifacts: Iterable[Path] = (), last: bool = False,
                  publish: Callable[[StageRun, dict], None] = lambda run, metrics: None) -> dict:
    """`call` inside the stage's MLflow run, then its metrics file,
    artifacts and `publish(run, metrics)` (what the stage adds to the parent or the registry); `last`
    finishes the parent. Only the main process of a distributed run tracks and writes."""
    if not is_main_process():
        return call()
    with stage_run(stage, params, _declared_keys(params_file, stage), last=last) as run:
        metrics = call()
        run.write_metrics(metrics_path, metrics)
        for artifact in artifacts:
            run.log_artifact(artifact)
        publish(run, metrics)
    return metrics


def _declared_keys(params_file: Path, stage: str) -> tuple[str, ...] | None:
    """The keys dvc.yaml beside the params file declares for `stage` (what its run logs); all outside DVC."""
    dvc_yaml = Path(params_file).parent / "dvc.yaml"
    if not dvc_yaml.is_file():
        log.warning("%s not found: logging every param on the %s run", dvc_yaml, stage)
        return None
    return stage_param_keys(dvc_yaml, stage)
