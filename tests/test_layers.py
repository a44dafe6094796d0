"""docs/architecture.md's layer table is the rule: every module is in it once, and imports go down only.

A sideways or upward import fails unless docs/architecture.md lists the pair under "Allowed sideways
imports". Package `__init__.py` files import nothing, so importing one module never drags in its
siblings (a stage's DVC deps stay its own imports).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "nerdistill"
DOC = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")


def layer_table() -> dict[str, int]:
    """`tagger/core.py` -> 4, from the table's `| layer | module | job |` rows."""
    rows = re.findall(r"^\| (\d+) \| `([^`]+\.py)`(?:, `([^`]+\.py)`)? \|", DOC, flags=re.MULTILINE)
    table: dict[str, int] = {}
    for layer, *modules in rows:
        for module in filter(None, modules):
            assert module not in table, f"docs/architecture.md lists {module} twice"
            table[module] = int(layer)
    return table


def allowed_pairs() -> set[tuple[str, str]]:
    section = DOC.split("### Allowed sideways imports", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^- `([^`]+\.py)` → `([^`]+\.py)`", section, flags=re.MULTILINE))


def module_path(dotted: str) -> str | None:
    """`nerdistill.tagger.core` -> `tagger/core.py`; None for a name that is not a module of ours."""
    parts = dotted.split(".")[1:]
    for candidate in ("/".join(parts) + ".py", "/".join([*parts, "__init__.py"])):
        if parts and (PACKAGE / candidate).is_file():
            return candidate
    return None


def imports(path: Path) -> set[str]:
    """Every module of ours that `path` imports, at module level or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "nerdistill":
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found |= {module for module in map(module_path, names) if module and not module.endswith("__init__.py")}
    return found


def sources() -> list[str]:
    return sorted(str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py"))


def test_every_module_is_in_the_layer_table():
    table = layer_table()
    modules = {name for name in sources() if not name.endswith("__init__.py")}
    assert not modules - set(table), f"add to docs/architecture.md's layer table: {sorted(modules - set(table))}"
    assert not set(table) - modules, f"no such module, drop from the table: {sorted(set(table) - modules)}"


def test_imports_go_down_a_layer_or_more():
    table, allowed = layer_table(), allowed_pairs()
    wrong = [f"{module} (layer {table[module]}) imports {target} (layer {table[target]})"
             for module in table for target in sorted(imports(PACKAGE / module))
             if table[target] >= table[module] and (module, target) not in allowed]
    assert not wrong, "\n".join(wrong)


def test_package_inits_import_nothing():
    for name in sources():
        if name.endswith("__init__.py"):
            tree = ast.parse((PACKAGE / name).read_text(encoding="utf-8"))
            assert not [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))], name
