"""MLflow tracking: one parent run per execution key, a nested run per stage, DVC metrics files."""
import json

import mlflow

from nerdistill import tracking
from nerdistill.params import params_from_dict


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
