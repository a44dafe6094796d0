"""docs/architecture.md names every module of the package, so a newcomer finds each one's job."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_module_is_in_the_architecture_doc():
    doc = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    package = REPO / "src" / "nerdistill"
    modules = [path.relative_to(package).as_posix() for path in package.rglob("*.py")]
    missing = [module for module in modules if f"`{module}`" not in doc
               and f"`{module.rsplit('/', 1)[-1]}`" not in doc]
    assert not missing, f"docs/architecture.md does not name {missing}"


def _exp_show_columns() -> list[str]:
    """The column names `dvc exp show` gives this checkout's metrics files and params.yaml: flattened keys,
    `file:key` where two files share a key (as dvc.repo.experiments.show names them)."""
    from collections import Counter

    import yaml
    from dvc.utils.flatten import flatten

    from nerdistill.io import read_json
    from nerdistill.results import METRICS_FILES

    files = {path: flatten(read_json(REPO / path)) for path in METRICS_FILES.values()}
    files["params.yaml"] = flatten(yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8")))
    fixed = ["Experiment", "rev", "typ", "Created", "parent", "State", "Executor"]
    count = Counter([*fixed, *(key for keys in files.values() for key in keys)])
    return fixed + [key if count[key] == 1 else f"{path}:{key}" for path, keys in files.items() for key in keys]


def _keep(pattern: str, columns: list[str]) -> list[str]:
    # `dvc exp show --keep` keeps a column when re.match (anchored at the start only) finds the pattern.
    keep = re.compile(pattern)
    return [column for column in columns if keep.match(column)]


def test_the_demo_table_keeps_the_decision_and_few_columns():
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    pattern = re.search(r"^DEMO_COLUMNS := '(.*)'$", makefile, re.M).group(1).replace("$$", "$")
    columns = _exp_show_columns()
    assert len(columns) > 100  # what an unanchored pattern picks from
    assert _keep(pattern, columns) == [
        "Experiment", "decision", "basis", "variant", "f1", "f1_drop_points", "latency_ratio_vs_teacher_fp32",
        "size_ratio_vs_teacher_fp32", "pruning.ratio"]


def test_the_readme_exp_show_keeps_what_it_names():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    pattern = re.search(r"^dvc exp show .*?--keep '([^']*)'", readme, re.M | re.S).group(1)
    kept = _keep(pattern, _exp_show_columns())
    assert kept[:2] == ["Experiment", "decision"] and len(kept) <= 10
    assert {"f1", "pruning.ratio"} <= set(kept) and not [column for column in kept if column.startswith("models.")]


def test_the_real_clone_waits_for_a_loadable_teacher(tmp_path):
    """`make real-clone`'s check: a folder that its build just created is not a teacher yet."""
    import json
    import subprocess
    import sys

    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    check = re.search(r"^REAL_TEACHER_CHECK := (.*?)\n\n", makefile, re.M | re.S).group(1).replace("\\\n\t", " ")

    def loadable(folder) -> bool:
        return subprocess.run([sys.executable, "-c", check, str(folder)]).returncode == 0

    teacher = tmp_path / "teacher"
    teacher.mkdir()
    assert not loadable(teacher) and not loadable(tmp_path / "absent")
    (teacher / "config.json").write_text(json.dumps({"architectures": ["BertForTokenClassification"]}))
    (teacher / "model.safetensors").write_bytes(b"weights")
    assert not loadable(teacher)  # no model_type: transformers cannot load it
    (teacher / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert loadable(teacher)
    (teacher / "model.safetensors").unlink()
    assert not loadable(teacher)  # still training: no weights yet


def test_the_docs_commands_name_the_venvs_python():
    for doc in (REPO / "docs" / "results.md", REPO / "README.md"):
        bare = [line for line in doc.read_text(encoding="utf-8").splitlines()
                if re.search(r"(^|[\s`(])python3? (scripts/|-c|-m)", line)]
        assert not bare, f"{doc.name}: {bare}"
