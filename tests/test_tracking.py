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
        run.log_summary({"passed": True})
    parents = [r for r in _runs() if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 3
    named = next(r for r in parents if r.data.tags.get("dvc_exp_name") == "tiny-exp")
    assert named.data.metrics["summary.passed"] == 1.0
    assert any(r.data.tags.get("gate") == "GO" for r in parents)


def test_log_metrics_outside_a_run_is_a_no_op(mlflow_workdir):
    tracking.log_metrics({"loss": 1.0})
    assert mlflow.active_run() is None


def test_flatten_metrics_keeps_numbers_only():
    flat = tracking.flatten_metrics({"a": {"b": 1, "c": "x", "d": float("nan")}, "ok": True, "l": [1]})
    assert flat == {"a.b": 1.0, "ok": 1.0}


def _parents():
    return [r for r in _runs() if "mlflow.parentRunId" not in r.data.tags]


def test_parent_runs_until_the_last_stage_and_fails_with_any(mlflow_workdir):
    import time

    import pytest

    params = params_from_dict({})
    with tracking.stage_run("annotate", params):
        time.sleep(0.3)
    assert _parents()[0].info.status == "RUNNING"  # between stages: the pipeline still runs
    with tracking.stage_run("gate", params, last=True):
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


def test_run_name_says_what_changed_from_the_closest_earlier_run(mlflow_workdir, monkeypatch):
    import subprocess

    import yaml

    subprocess.run(["git", "init", "-q", "-b", "trial"], check=True)
    (mlflow_workdir / "params.yaml").write_text(yaml.safe_dump({"pruning": {"ratio": 0.25}}))
    subprocess.run(["git", "add", "params.yaml"], check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "p"], check=True)
    commit = tracking.git_commit()[:7]
    with tracking.stage_run("gate", params_from_dict({})):
        pass
    profile = {"teacher": {"model_name": str(mlflow_workdir / "models" / "demo_teacher")},
               "distill": {"epochs": 3, "learning_rate": 0.0005}, "finetune": {"epochs": 7}, "bench": {"repeats": 10}}
    monkeypatch.setenv("DVC_EXP_NAME", "demo-run")
    with tracking.stage_run("gate", params_from_dict(profile)):
        pass
    monkeypatch.setenv("DVC_EXP_NAME", "curly-coof")
    with tracking.stage_run("gate", params_from_dict({**profile, "pruning": {"ratio": 0.15}})):
        pass
    names = {run.info.run_name: run.data.tags["mlflow.note.content"] for run in _parents()}
    assert f"trial@{commit} (shipped params)" in names
    # From the committed params: the profile's five changes, past the four a name spells out; a path by its folder.
    assert "demo-run bench.repeats=10 distill.epochs=3 distill.learning_rate=0.0005 finetune.epochs=7 +1 more" in names
    assert "teacher.model_name=demo_teacher" in names["demo-run bench.repeats=10 distill.epochs=3 "
                                                      "distill.learning_rate=0.0005 finetune.epochs=7 +1 more"]
    # The profile plus one change reads as that change from the profile's run; its description says from what.
    description = names["curly-coof pruning.ratio=0.15"]
    assert "Changed from the run `demo-run" in description and "`pruning.ratio=0.15`" in description
    assert "From the committed params.yaml: `bench.repeats=10" in description


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


def test_a_sweeps_runs_carry_its_tag_and_the_gate_summary(mlflow_workdir, monkeypatch, tmp_path):
    monkeypatch.setenv("DVC_EXP_NAME", "L3-h25")
    monkeypatch.setenv(tracking.SWEEP_ENV, "demo")
    with tracking.stage_run("gate", params_from_dict({}), ()) as run:
        run.log_summary({"f1": 0.9, "doc_p50_ms": 12.5, "disk_bytes": 1e6, "size_ratio_vs_teacher_int8": None})
    (parent,) = _parents()
    assert parent.data.tags["sweep"] == "demo" and parent.data.tags["dvc_exp_name"] == "L3-h25"
    assert parent.data.metrics == {"summary.f1": 0.9, "summary.doc_p50_ms": 12.5, "summary.disk_bytes": 1e6}
    assert parent.data.params["student.num_layers"] == "10"  # the swept params, for parallel coordinates


def test_the_store_is_the_checkouts_even_in_a_dvc_scratch_copy(tmp_path, monkeypatch):
    checkout, scratch = tmp_path / "repo", tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpab12"
    scratch.mkdir(parents=True)
    monkeypatch.chdir(scratch)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(tracking.ROOT_ENV, raising=False)
    assert tracking.tracking_uri() == f"sqlite:///{scratch.resolve() / 'mlflow.db'}"  # outside DVC: here
    monkeypatch.setenv(tracking.ROOT_ENV, str(checkout))  # what DVC sets for temp and queued runs
    assert tracking.tracking_uri() == f"sqlite:///{checkout.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///stores/m.db")
    assert tracking.tracking_uri() == f"sqlite:///{checkout.resolve() / 'stores' / 'm.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'other.db'}")
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'other.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri() == "http://127.0.0.1:5000"


def _tiny_export(folder):
    """An ONNX folder as export writes it, small: a graph (B, T) int64 -> (B, T, 2) float, and its CRF file."""
    import onnx
    from onnx import TensorProto, helper

    folder.mkdir()
    graph = helper.make_graph(
        [helper.make_node("Cast", ["input_ids"], ["cast"], to=TensorProto.FLOAT),
         helper.make_node("Unsqueeze", ["cast", "axes"], ["emissions"])], "tiny",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B", "T"])],
        [helper.make_tensor_value_info("emissions", TensorProto.FLOAT, ["B", "T", 1])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [2])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "model.onnx")
    (folder / "crf.json").write_text("{}")
    return folder / "model.onnx"


def test_the_shipped_export_is_a_model_registered_as_champion_on_go_only(mlflow_workdir):
    import mlflow.onnx

    params, figures = params_from_dict({}), {"f1": 0.9, "doc_p50_ms": 4.0}
    with tracking.stage_run("export", params):
        digest = tracking.log_onnx_model(_tiny_export(mlflow_workdir / "student_int8"))
    client = mlflow.MlflowClient()
    (model,) = client.search_logged_models([_parents()[0].info.experiment_id])
    assert model.tags[tracking.DIGEST_TAG] == digest and model.source_run_id
    signature = mlflow.models.get_model_info(f"models:/{model.model_id}").signature
    assert [(spec.name, str(spec.type), spec.shape) for spec in signature.inputs.inputs] == [
        ("input_ids", "int64", (-1, -1))]
    assert [(spec.name, str(spec.type), spec.shape) for spec in signature.outputs.inputs] == [
        ("emissions", "float32", (-1, -1, 1))]

    with tracking.stage_run("gate", params, last=True) as gate:
        assert gate.judge_model(digest, figures, promote=False) is None
        assert gate.judge_model("0" * 16, figures, promote=True) is None  # no such export: nothing registered
    assert client.search_registered_models() == []
    linked = client.get_logged_model(model.model_id).metrics
    assert {(metric.key, metric.value, metric.run_id) for metric in linked} == {
        ("f1", 0.9, gate.run_id), ("doc_p50_ms", 4.0, gate.run_id)}

    with tracking.stage_run("gate", params, last=True) as gate:
        version = gate.judge_model(digest, figures, promote=True)
        assert gate.judge_model(digest, figures, promote=True) == version  # one version per export
    champion = client.get_model_version_by_alias(tracking.REGISTERED_MODEL, tracking.CHAMPION)
    assert champion.version == version and champion.source == f"models:/{model.model_id}"
    assert champion.tags["parent_run_id"] == gate.parent_id
    assert (mlflow.onnx.load_model(f"models:/{tracking.REGISTERED_MODEL}@{tracking.CHAMPION}").graph.input[0].name
            == "input_ids")
