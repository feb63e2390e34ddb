"""Dependencies run one way: families and the SDK never import the hub (a family is a
plugin: it must build and test against the SDK alone), and the SDK imports no family."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imported_top_levels(folder: Path) -> dict[str, set[str]]:
    """Each module under ``folder`` (by its path inside it) → the top-level packages it
    imports, at module level or inside a function (a lazy import is still a dependency)."""
    found: dict[str, set[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(folder))] = names
    return found


def test_families_never_import_the_hub() -> None:
    found = imported_top_levels(ROOT / "connectors")
    offenders = {  # a family's own tests may run it inside the hub
        module for module, names in found.items() if "hub" in names and "/tests/" not in module
    }
    assert not offenders, f"import the SDK (diasyndesi_sdk) instead of hub in: {sorted(offenders)}"


def test_the_sdk_imports_neither_the_hub_nor_a_family() -> None:
    offenders = {
        f
        for f, names in imported_top_levels(ROOT / "diasyndesi_sdk").items()
        if names & {"hub", "connectors"}
    }
    assert not offenders, sorted(offenders)


def test_the_check_sees_a_lazy_import_of_the_hub(tmp_path: Path) -> None:
    (tmp_path / "lazy.py").write_text(
        "def f():\n    from hub.errors import RetryableError\n", encoding="utf-8"
    )
    assert imported_top_levels(tmp_path) == {"lazy.py": {"hub"}}
