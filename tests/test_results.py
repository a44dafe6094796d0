"""The one table of metrics paths (results.METRICS_FILES) is what dvc.yaml declares, stage by stage."""
from pathlib import Path

import yaml

from nerdistill.results import METRICS_FILES

REPO = Path(__file__).resolve().parents[1]


def test_every_stage_writes_the_metrics_file_results_names():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    declared = {name: [next(iter(entry)) for entry in stage.get("metrics", [])] for name, stage in stages.items()}
    assert declared == {stage: [path] for stage, path in METRICS_FILES.items()}
