"""The harness reads top-down: no module imports one above it, at import or at run time.

Imports are read from the source (function-level ones included), so an import deferred
into a function counts as much as one at the top of the file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "revbench"


def imported_modules(module: str) -> set[str]:
    """Every module `revbench.<module>` imports, relative imports resolved."""
    path = PACKAGE.joinpath(*module.split(".")).with_suffix(".py")
    if not path.is_file():  # a package: its __init__
        path = PACKAGE.joinpath(*module.split("."), "__init__.py")
    package = ["revbench", *module.split(".")[:-1]]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            parent = ".".join([*base, *([node.module] if node.module else [])])
            found.add(parent)
            # `from . import figures` imports the module revbench.figures.
            found.update(f"{parent}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize(
    ("module", "above"),
    [
        ("records", "revbench.models"),  # storing a record never reads the registry
        ("store", "revbench.models"),
        ("environment", "revbench.methods.cuda"),  # the manifest does not load a method
        ("cell", "revbench.models"),
        ("measurement", "revbench.models"),
        ("gate", "revbench.cli"),  # the gate runs suites through the runner's function
        ("comparison", "revbench.cli"),
        ("report", "revbench.figures"),  # the report borrows data helpers from analysis
        ("report", "revbench.plot"),
        ("analysis", "revbench.figures"),
        ("figures.style", "revbench.figures.macs"),  # what the figures share sits below them
        ("figures.style", "revbench.figures.memory"),
        ("runner", "revbench.cli"),
    ],
)
def test_no_import_runs_back_up(module, above):
    # `above` may be a package: importing any module inside it runs back up too.
    found = [m for m in imported_modules(module) if m == above or m.startswith(above + ".")]
    assert not found, f"revbench.{module} imports {', '.join(found)}"


def test_the_scan_resolves_relative_imports():
    # report does `from .analysis import ...`, figures `from .measurement import ...`.
    assert "revbench.analysis" in imported_modules("report")
    assert "revbench.measurement" in imported_modules("figures.memory")
    assert "revbench.figures.style" in imported_modules("figures.macs")
    assert "revbench.methods.base" in imported_modules("methods.cpu")
