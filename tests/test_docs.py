"""docs/architecture.md names every module of the package, so a newcomer finds each one's job."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_module_is_in_the_architecture_doc():
    doc = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    package = REPO / "src" / "nerdistill"
    modules = [path.relative_to(package).as_posix() for path in package.rglob("*.py")]
    missing = [module for module in modules if f"`{module}`" not in doc
               and f"`{module.rsplit('/', 1)[-1]}`" not in doc]
    assert not missing, f"docs/architecture.md does not name {missing}"
