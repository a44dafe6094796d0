"""The console script: exit codes and messages a user sees."""
import json

import pytest
import yaml

from nerdistill.cli import main


def test_help_lists_every_stage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("annotate", "distill", "prune", "finetune", "evaluate", "bench", "gate", "predict", "export"):
        assert command in out


def test_bad_params_exit_2_naming_the_key(mlflow_workdir, caplog):
    (mlflow_workdir / "params.yaml").write_text(yaml.safe_dump({"pruning": {"ratio": 1.5}}))
    code = main(["gate", "--eval", "e.json", "--bench", "b.json", "--out", "g.json"])
    assert code == 2
    assert "pruning.ratio" in caplog.text


def test_missing_model_folder_exits_2(mlflow_workdir, caplog):
    code = main(["predict", "--model", str(mlflow_workdir / "no_model"), "--input", "-", "--output", "-"])
    assert code == 2
    assert "no_model" in caplog.text


def test_unknown_teacher_exits_2_and_says_how_to_fix(mlflow_workdir, caplog, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (mlflow_workdir / "params.yaml").write_text(yaml.safe_dump({"teacher": {"model_name": "nobody/no-such-model"}}))
    (mlflow_workdir / "corpus.txt").write_text("Marie habite à Lyon.\nPaul travaille chez Renault.\nIl pleut.\n")
    code = main(["annotate", "--corpus", "corpus.txt", "--out", "annotated", "--metrics", "m.json"])
    assert code == 2
    assert "teacher.model_name" in caplog.text and "local folder" in caplog.text


def _gate_inputs(mlflow_workdir, latency):
    """Metrics of the model the gate judges by default, the int8 ONNX export."""
    (mlflow_workdir / "eval.json").write_text(json.dumps(
        {"agreement": {"teacher": {"f1": 1.0}, "onnx_int8": {"f1": 0.99}},
         "f1_drop_points": {"agreement": {"onnx_int8": 1.0}}}))
    (mlflow_workdir / "bench.json").write_text(json.dumps(
        {"teacher": "teacher", "final": "final", "doc_tokens": 350, "threads": 2, "max_spread": 2.0, "unstable": [],
         "models": {
             "teacher": {"kind": "teacher", "disk_bytes": 4e8,
                         "variants": {"cpu_fp32": {"doc_p50_ms": 800.0, "p95_over_p50": 1.2}}},
             "onnx_int8": {"kind": "onnx", "disk_bytes": 1e8, "variants": {
                 "cpu_onnx": {"doc_p50_ms": latency, "peak_rss_mb": 500.0, "p95_over_p50": 1.1}}},
             "teacher_int8": {"kind": "onnx", "disk_bytes": 2e8,
                              "variants": {"cpu_onnx": {"doc_p50_ms": 400.0, "p95_over_p50": 1.1}}}}}))


@pytest.mark.parametrize(("fail_on_nogo", "latency", "code", "decision"), [
    (False, 400.0, 0, "NO-GO"), (True, 400.0, 1, "NO-GO"), (True, 100.0, 0, "GO")])
def test_gate_exit_code_follows_fail_on_nogo(mlflow_workdir, capsys, fail_on_nogo, latency, code, decision):
    (mlflow_workdir / "params.yaml").write_text(yaml.safe_dump({"gate": {"fail_on_nogo": fail_on_nogo}}))
    _gate_inputs(mlflow_workdir, latency)
    assert main(["gate", "--eval", "eval.json", "--bench", "bench.json", "--out", "gate.json"]) == code
    assert json.loads((mlflow_workdir / "gate.json").read_text())["decision"] == decision
    assert capsys.readouterr().out.startswith(f"{decision}  (onnx_int8 cpu_onnx")


def test_gate_variant_absent_from_the_metrics_exits_2_naming_the_key(mlflow_workdir, caplog):
    (mlflow_workdir / "params.yaml").write_text(yaml.safe_dump({"gate": {"variant": "final"}}))
    _gate_inputs(mlflow_workdir, 100.0)
    assert main(["gate", "--eval", "eval.json", "--bench", "bench.json", "--out", "gate.json"]) == 2
    assert "gate.variant = 'final'" in caplog.text and "onnx_int8:cpu_onnx" in caplog.text
    assert not (mlflow_workdir / "gate.json").exists()


def test_stage_run_logs_exactly_the_params_dvc_yaml_declares(mlflow_workdir):
    import mlflow

    (mlflow_workdir / "params.yaml").write_text(yaml.safe_dump({"gate": {"max_memory_mb": 1000}}))
    (mlflow_workdir / "dvc.yaml").write_text(yaml.safe_dump(
        {"stages": {"gate": {"cmd": "nerdistill gate", "params": ["gate.max_memory_mb", "base"]}}}))
    _gate_inputs(mlflow_workdir, 100.0)
    main(["gate", "--eval", "eval.json", "--bench", "bench.json", "--out", "gate.json"])
    runs = mlflow.search_runs(experiment_names=["nerdistill"], filter_string="tags.stage = 'gate'",
                              output_format="list")
    assert set(runs[0].data.params) == {"gate.max_memory_mb", "base.seed"}


def test_gate_puts_the_judged_variants_figures_on_the_parent_run(mlflow_workdir):
    import mlflow

    (mlflow_workdir / "params.yaml").write_text("{}")
    _gate_inputs(mlflow_workdir, 100.0)
    assert main(["gate", "--eval", "eval.json", "--bench", "bench.json", "--out", "gate.json"]) == 0
    (parent,) = [run for run in mlflow.search_runs(experiment_names=["nerdistill"], output_format="list")
                 if "mlflow.parentRunId" not in run.data.tags]
    # The columns a sweep's runs are compared on in MLflow (parallel coordinates: params against these).
    figures = {key: parent.data.metrics[f"summary.{key}"] for key in ("f1", "f1_drop_points", "doc_p50_ms", "disk_bytes",
               "peak_rss_mb", "latency_ratio_vs_teacher_fp32", "size_ratio_vs_teacher_fp32")}
    assert figures == {"f1": 0.99, "f1_drop_points": 1.0, "doc_p50_ms": 100.0, "disk_bytes": 1e8,
                       "peak_rss_mb": 500.0, "latency_ratio_vs_teacher_fp32": 0.125, "size_ratio_vs_teacher_fp32": 0.25}
    assert parent.data.tags["gate"] == "GO"


def test_a_stage_help_edit_reruns_only_that_stage(tmp_path):
    """Each stage owns its options: editing one stage's help text changes that stage's deps alone
    (`dvc status`), so a typo fix in prune's help never re-runs the teacher pass or distill."""
    import re
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    for name in ("dvc.yaml", "dvc.lock", "params.yaml"):
        shutil.copy(repo / name, tmp_path / name)
    shutil.copytree(repo / ".dvc", tmp_path / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    shutil.copytree(repo / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "data" / "raw").mkdir(parents=True)
    shutil.copy(repo / "data" / "raw" / "corpus.txt", tmp_path / "data" / "raw" / "corpus.txt")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    for stage in stages:
        module = tmp_path / "src" / "nerdistill" / "stages" / f"{stage}.py"
        text = module.read_text(encoding="utf-8")
        arguments = text.index("def add_arguments(")
        edited = re.sub(r'help="', 'help="(edited) ', text[arguments:], count=1)
        assert edited != text[arguments:], f"{module.name}: add_arguments has no help text to edit"
        module.write_text(text[:arguments] + edited, encoding="utf-8")
    dvc = Path(sys.executable).parent / "dvc"
    status = json.loads(subprocess.run([str(dvc), "status", "--json"], cwd=tmp_path, capture_output=True,
                                       text=True, check=True).stdout)
    for stage in stages:
        changed = {path for entry in status.get(stage, []) if isinstance(entry, dict)
                   for path in entry.get("changed deps", {}) if path.startswith("src/nerdistill/stages/")}
        assert changed == {f"src/nerdistill/stages/{stage}.py"}, (stage, changed)
