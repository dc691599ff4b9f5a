"""Imports point down: rtml_core at the bottom; the stream, the Dagster code location and the API
on it, side by side; the CLI on top. Every import of every module counts, function-level too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAY_IMPORT = {
    "rtml_core": set(),
    "rtml_stream": {"rtml_core"},
    "rtml_assets": {"rtml_core"},
    "api": {"rtml_core"},
    "rtml_cli": {"rtml_core", "rtml_stream", "rtml_assets", "api"},
}


def imported_packages(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import of one of rtml's packages in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, name.split(".")[0]) for name in names if name.split(".")[0] in MAY_IMPORT]
    return found


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_nothing_imports_a_package_above_it(package: str) -> None:
    modules = sorted((REPO / package).rglob("*.py"))
    assert modules, f"no modules found under {package}/"
    upward = [
        f"{path.relative_to(REPO)}:{line} imports {target}"
        for path in modules
        for line, target in imported_packages(path)
        if target != package and target not in MAY_IMPORT[package]
    ]
    assert upward == [], "imports pointing up or sideways:\n" + "\n".join(upward)


def test_the_walk_sees_function_level_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from rtml_cli.commands import COMMANDS\n    import api.app\n")
    assert imported_packages(module) == [(4, "rtml_cli"), (5, "api")]
