"""Every installed family folder has the same shape (decision 0014, issue 9): whoever opens
one, to review it or to write the next, finds the same files in the same places and a README
that answers the same six questions in the same order."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from diasyndesi_sdk.family import ENTRY_POINT_GROUP, FamilySpec
from hub.families import installed_families

FILES = (
    "__init__.py",
    "connector.py",
    "client.py",
    "sandbox/__init__.py",
    "sandbox/app.py",
    "tests/__init__.py",
    "README.md",
    "CHANGELOG.md",
)
"""``tests/__init__.py``: every family has a ``test_connector.py``, so its tests must be a
package for pytest to tell them apart."""
TEMPLATE = ("Protocol", "Authentication", "Mapping", "Errors", "Status", "Withdrawal")
"""The README's first ``##`` sections, in this order; any others come after them."""


def family_folder(name: str) -> Path:
    """The package the family's entry point names (where its ``FAMILY`` spec lives)."""
    point = next(p for p in entry_points(group=ENTRY_POINT_GROUP) if p.name == name)
    module = importlib.import_module(point.module)
    assert module.__file__ is not None, f"{name}: {point.module} is not a package folder"
    return Path(module.__file__).parent


def sections(markdown: str) -> list[tuple[str, str]]:
    """``(title, text)`` of each ``##`` section, in order; headings inside code blocks are
    not headings."""
    found: list[tuple[str, str]] = []
    fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("## "):
            found.append((line[3:].strip(), ""))
        elif found:
            found[-1] = (found[-1][0], found[-1][1] + line + "\n")
    return found


def shape_problems(spec: FamilySpec, folder: Path) -> list[str]:
    """What ``folder`` lacks to have the shape every family has; empty when it has it."""
    problems = [f"no {name}" for name in FILES if not (folder / name).is_file()]
    if not list(folder.glob("tests/test_*.py")):
        problems.append("no tests/test_*.py")
    readme = folder / "README.md"
    if readme.is_file():
        problems += readme_problems(spec, sections(readme.read_text(encoding="utf-8")))
    changelog = folder / "CHANGELOG.md"
    if changelog.is_file():
        text = changelog.read_text(encoding="utf-8")
        if not text.startswith("# Changelog") or "\n## [" not in text:
            problems.append("CHANGELOG.md is not a Keep a Changelog file (# Changelog, ## [...])")
    return problems


def readme_problems(spec: FamilySpec, found: list[tuple[str, str]]) -> list[str]:
    titles = [title for title, _ in found]
    if tuple(titles[: len(TEMPLATE)]) != TEMPLATE or len(set(titles)) != len(titles):
        return [f"README.md sections are {titles}; the first must be {list(TEMPLATE)}, once each"]
    text = dict(found)
    problems = []
    if not any(line.startswith("|") for line in text["Errors"].splitlines()):
        problems.append("README.md: Errors has no table (answer → error_class → retried)")
    if spec.status not in text["Status"].lower():
        problems.append(f"README.md: Status does not say {spec.status!r}, as the FamilySpec does")
    return problems


@pytest.mark.parametrize("family", sorted(installed_families()))
def test_every_family_folder_has_the_shape(family: str) -> None:
    problems = shape_problems(installed_families()[family], family_folder(family))
    assert not problems, f"family {family}: " + "; ".join(problems)


def test_the_check_names_what_a_family_lacks(tmp_path: Path) -> None:
    spec = FamilySpec(name="example", connector="example.connector:Example", status="poll")
    for name in ("__init__.py", "connector.py", "sandbox/__init__.py", "tests/test_x.py"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).touch()
    (tmp_path / "README.md").write_text("## Protocol\n## Mapping\n## Authentication\n")
    assert shape_problems(spec, tmp_path) == [
        "no client.py",
        "no sandbox/app.py",
        "no tests/__init__.py",
        "no CHANGELOG.md",
        "README.md sections are ['Protocol', 'Mapping', 'Authentication']; the first must be "
        "['Protocol', 'Authentication', 'Mapping', 'Errors', 'Status', 'Withdrawal'], once each",
    ]
    template = "".join(f"## {title}\nPushed by the agency.\n" for title in TEMPLATE)
    (tmp_path / "README.md").write_text(template + "```\n## Not a heading\n```\n## Sandbox\n")
    (tmp_path / "CHANGELOG.md").write_text("Changes\n")
    assert shape_problems(spec, tmp_path)[-3:] == [
        "README.md: Errors has no table (answer → error_class → retried)",
        "README.md: Status does not say 'poll', as the FamilySpec does",
        "CHANGELOG.md is not a Keep a Changelog file (# Changelog, ## [...])",
    ]
