"""MLflow tracking: one parent run per execution key, a nested run per stage, DVC metrics files."""
import json

import mlflow

from nerdistill import tracking
from nerdistill.params_reader import params_from_dict


def _runs(filter_string=""):
    experiment = mlflow.MlflowClient().get_experiment_by_name(tracking.EXPERIMENT)
    return mlflow.search_runs([experiment.experiment_id], filter_string=filter_string, output_format="list")


def test_stages_of_one_execution_share_a_parent(mlflow_workdir):
    params = params_from_dict({})
    with tracking.stage_run("annotate", params, ("annotate",)) as run:
        run.write_metrics(mlflow_workdir / "metrics" / "annotate.json", {"phrases": {"total": 10}, "note": "text"})
    with tracking.stage_run("distill", params, ("distill",)) as run:
        tracking.log_metrics({"loss": 1.5}, step=3)
    runs = _runs()
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert parents[0].data.params["pruning.ratio"] == "0.25"
    annotate = next(r for r in children if r.data.tags["stage"] == "annotate")
    assert annotate.data.metrics["phrases.total"] == 10
    assert "pruning.ratio" not in annotate.data.params and "annotate.drop_types" in annotate.data.params
    assert json.loads((mlflow_workdir / "metrics" / "annotate.json").read_text())["note"] == "text"


def test_changed_params_or_experiment_name_open_a_new_parent(mlflow_workdir, monkeypatch):
    with tracking.stage_run("gate", params_from_dict({}), ()) as run:
        run.set_parent_tag("gate", "GO")
    with tracking.stage_run("gate", params_from_dict({"pruning": {"ratio": 0.5}}), ()):
        pass
    monkeypatch.setenv("DVC_EXP_NAME", "tiny-exp")
    with tracking.stage_run("gate", params_from_dict({}), ()) as run:
        run.write_metrics(mlflow_workdir / "gate.json", {"passed": True}, to_parent=True)
    parents = [r for r in _runs() if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 3
    named = next(r for r in parents if r.data.tags.get("dvc_exp_name") == "tiny-exp")
    assert named.data.metrics["gate.passed"] == 1.0
    assert any(r.data.tags.get("gate") == "GO" for r in parents)


def test_log_metrics_outside_a_run_is_a_no_op(mlflow_workdir):
    tracking.log_metrics({"loss": 1.0})
    assert mlflow.active_run() is None


def test_flatten_metrics_keeps_numbers_only():
    flat = tracking.flatten_metrics({"a": {"b": 1, "c": "x", "d": float("nan")}, "ok": True, "l": [1]})
    assert flat == {"a.b": 1.0, "ok": 1.0}


def _parents():
    return [r for r in _runs() if "mlflow.parentRunId" not in r.data.tags]


def test_parent_spans_its_stages_and_fails_with_them(mlflow_workdir):
    import time

    import pytest

    params = params_from_dict({})
    with tracking.stage_run("annotate", params):
        time.sleep(0.3)
    with tracking.stage_run("distill", params):
        time.sleep(0.3)
    (parent,) = _parents()
    children = [r for r in _runs() if "mlflow.parentRunId" in r.data.tags]
    assert parent.info.status == "FINISHED"
    assert parent.info.start_time <= min(c.info.start_time for c in children)
    assert parent.info.end_time >= max(c.info.end_time for c in children)
    assert parent.info.end_time - parent.info.start_time >= 600

    with pytest.raises(RuntimeError):
        with tracking.stage_run("prune", params):
            raise RuntimeError("out of memory")
    (parent,) = _parents()
    assert parent.info.status == "FAILED"
    prune = next(r for r in _runs() if r.data.tags.get("stage") == "prune")
    assert prune.info.status == "FAILED"


def test_experiment_opens_on_the_runs_table(mlflow_workdir):
    with tracking.stage_run("gate", params_from_dict({})):
        pass
    experiment = mlflow.MlflowClient().get_experiment_by_name(tracking.EXPERIMENT)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert (mlflow_workdir / "mlartifacts").as_uri() == experiment.artifact_location


def test_run_name_says_what_differs_from_the_shipped_params(mlflow_workdir, monkeypatch):
    import subprocess

    import yaml

    subprocess.run(["git", "init", "-q", "-b", "trial"], check=True)
    (mlflow_workdir / "params.yaml").write_text(yaml.safe_dump({"pruning": {"ratio": 0.25}}))
    subprocess.run(["git", "add", "params.yaml"], check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "p"], check=True)
    commit = tracking.git_commit()[:7]
    assert tracking.run_name(params_from_dict({})) == f"trial@{commit} (shipped params)"
    changed = params_from_dict({"pruning": {"ratio": 0.5}, "train": {"temperature": 3.0}})
    assert tracking.run_name(changed) == f"trial@{commit} pruning.ratio=0.5 train.temperature=3.0"
    monkeypatch.setenv("DVC_EXP_NAME", "sunny-pike")
    assert tracking.run_name(changed) == "sunny-pike"


RACE_SCRIPT = """
import sys
import mlflow
from nerdistill import tracking
from nerdistill.params_reader import params_from_dict
mlflow.set_tracking_uri(tracking.tracking_uri())
sys.stdin.readline()  # start together
with tracking.stage_run("gate", params_from_dict({"pruning": {"ratio": 0.4}})) as run:
    run.set_parent_tag("gate", "GO")
"""


def test_parallel_stages_of_one_execution_share_one_parent(mlflow_workdir, monkeypatch):
    import os
    import subprocess
    import sys

    for attempt in range(4):  # a fresh store each time: the experiment's creation races too
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{mlflow_workdir / f'race{attempt}.db'}")
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        procs = [subprocess.Popen([sys.executable, "-c", RACE_SCRIPT], stdin=subprocess.PIPE, env=os.environ.copy(),
                                  stderr=subprocess.PIPE, text=True) for _ in range(4)]
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err[-2000:]
        parents = _parents()
        assert len(parents) == 1 and parents[0].data.tags["gate"] == "GO"
        assert sum(r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id for r in _runs()) == 4


def test_a_sweeps_runs_carry_its_tag_and_the_gate_figures(mlflow_workdir, monkeypatch, tmp_path):
    monkeypatch.setenv("DVC_EXP_NAME", "L3-h25")
    monkeypatch.setenv(tracking.SWEEP_ENV, "demo")
    with tracking.stage_run("gate", params_from_dict({}), ()) as run:
        run.write_metrics(tmp_path / "gate.json", {"f1": 0.9, "doc_p50_ms": 12.5, "disk_bytes": 1e6}, to_parent=True)
    (parent,) = _parents()
    assert parent.data.tags["sweep"] == "demo" and parent.data.tags["dvc_exp_name"] == "L3-h25"
    assert parent.data.metrics == {"gate.f1": 0.9, "gate.doc_p50_ms": 12.5, "gate.disk_bytes": 1e6}
    assert parent.data.params["student.num_layers"] == "10"  # the swept params, for parallel coordinates


def test_absolute_uri_points_scratch_copies_at_this_checkouts_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.absolute_uri(tmp_path) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///stores/m.db")
    assert tracking.absolute_uri(tmp_path) == f"sqlite:///{tmp_path.resolve() / 'stores' / 'm.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.absolute_uri(tmp_path) == "http://127.0.0.1:5000"
