"""The one table of metrics paths (results.METRICS_FILES) is what dvc.yaml declares, stage by stage."""
from pathlib import Path

import yaml

from nerdistill.results import GATE_KEYS, METRICS_FILES, SUMMARY_KEYS

REPO = Path(__file__).resolve().parents[1]


def test_every_stage_writes_the_metrics_file_results_names():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    declared = {name: [next(iter(entry)) for entry in stage.get("metrics", [])] for name, stage in stages.items()}
    assert declared == {stage: [path] for stage, path in METRICS_FILES.items()}


def test_gate_json_leads_with_the_decision_and_the_figures_it_rests_on():
    assert GATE_KEYS[:7] == ("decision", "basis", "variant", "f1", "f1_drop_points", "latency_ratio_vs_teacher_fp32",
                             "size_ratio_vs_teacher_fp32")
    assert set(SUMMARY_KEYS) < set(GATE_KEYS) and len(set(GATE_KEYS)) == len(GATE_KEYS)
    assert GATE_KEYS[-1] == "checks"  # the long per-check records last


def test_every_plot_is_declared_once_and_its_template_exists():
    """A file under both the top-level `plots:` and a stage's `plots:` is drawn twice by `dvc plots diff`;
    one under a stage's uncached `outs` costs that stage its run-cache entry: each is a stage plot, once."""
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    assert not pipeline.get("plots")
    declared = [(next(iter(entry)), entry[next(iter(entry))]) if isinstance(entry, dict) else (entry, {})
                for stage in pipeline["stages"].values() for entry in stage.get("plots", [])]
    paths = [path for path, _ in declared]
    assert len(paths) == len(set(paths)) and any(path.endswith(".png") for path in paths)
    outs = {next(iter(out)) if isinstance(out, dict) else out for stage in pipeline["stages"].values()
            for out in stage.get("outs", [])}
    assert not outs & set(paths)
    templates = [props["template"] for _, props in declared if "template" in props]
    assert all((REPO / ".dvc" / "plots" / f"{name}.json").is_file() for name in templates)
    assert {"latency_bars", "per_class_f1"} <= set(templates)
