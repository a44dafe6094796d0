"""dvc.yaml tells the whole truth: each stage's code deps are exactly the modules its command imports.

A stage's command is `nerdistill <stage>`: it runs the package `__init__`, `cli.py` and what they
import at module level (their function-level imports serve other commands), then the stage module
and everything it imports, at any level, transitively. Listing one module too many costs only a
needless re-run; one too few lets DVC reuse stale outputs, so the test demands equality.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from nerdistill.params import ParamsError
from nerdistill.params_reader import stage_param_keys

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
ENTRY_MODULES = ("nerdistill", "nerdistill.cli")  # run for every command, module-level imports only


def module_file(name: str) -> Path | None:
    path = SRC / Path(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(name: str, module_level_only: bool) -> set[str]:
    path = module_file(name)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if module_level_only else ast.walk(tree)
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return {m for m in found if m.split(".")[0] == "nerdistill" and module_file(m)}


def with_packages(name: str) -> set[str]:
    """Importing a.b.c runs a/__init__ and a/b/__init__ first."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def closure(roots: set[str], module_level_only: bool) -> set[str]:
    seen: set[str] = set()
    todo = [m for root in roots for m in with_packages(root)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(m for found in imported_modules(name, module_level_only) for m in with_packages(found))
    return seen


def command_modules(stage: str) -> set[str]:
    entry = closure(set(ENTRY_MODULES), module_level_only=True)
    return entry | closure({f"nerdistill.stages.{stage}"}, module_level_only=False)


def code_deps(stage: dict) -> set[str]:
    return {dep for dep in stage.get("deps", []) if dep.startswith("src/")}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_are_the_modules_its_command_imports(stage: str) -> None:
    needed = {str(module_file(m).relative_to(REPO)) for m in command_modules(stage)}
    listed = code_deps(STAGES[stage])
    assert not needed - listed and not listed - needed, (
        f"dvc.yaml stage {stage!r}: add to deps {sorted(needed - listed)}, remove {sorted(listed - needed)}")


def test_closure_sees_function_level_and_relative_imports() -> None:
    assert "nerdistill.tagger.teacher" in command_modules("annotate")  # imported inside a function
    assert "nerdistill.torch" not in command_modules("annotate")
    assert "nerdistill.stages.prune" not in command_modules("distill")


def test_stages_depend_only_on_what_they_use() -> None:
    """An edit to training, pruning or loss code never re-runs the teacher pass; the gate, JSON in and
    JSON out, re-runs on its own code, the params and the result contract only."""
    heavy = {"nerdistill.modeling", "nerdistill.pruning", "nerdistill.importance", "nerdistill.losses",
             "nerdistill.trainer", "nerdistill.tagger.student", "nerdistill.tagger.onnx"}
    assert not heavy & command_modules("annotate")
    assert len(code_deps(STAGES["gate"])) <= 9
    assert "torch" not in {m.split(".")[0] for m in third_party_imports(command_modules("gate"))}


def third_party_imports(modules: set[str]) -> set[str]:
    found: set[str] = set()
    for name in modules:
        for node in ast.walk(ast.parse(module_file(name).read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                found.add(node.module or "")
    return {m for m in found if m.split(".")[0] != "nerdistill"}


def test_stage_param_keys_reads_both_dvc_yaml_forms(tmp_path: Path) -> None:
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "prune": {"params": ["base.seed", {"params.yaml": ["pruning", "train.temperature"]}]},
        "odd": {"params": [{"other.yaml": ["x"]}]}}}))
    assert stage_param_keys(tmp_path / "dvc.yaml", "prune") == ("base.seed", "pruning", "train.temperature")
    with pytest.raises(ParamsError, match="other.yaml"):
        stage_param_keys(tmp_path / "dvc.yaml", "odd")
    with pytest.raises(ParamsError, match="'gate'"):
        stage_param_keys(tmp_path / "dvc.yaml", "gate")
