"""The shape of the code: one concern a module, readable in one sitting, the CLI in commands/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "psconv"
MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PACKAGE)) for p in MODULES])
def test_module_and_function_sizes(path: Path) -> None:
    source = path.read_text()
    assert source.count("\n") <= 500, f"{path.name} has {source.count(chr(10))} lines (limit 500)"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= 90, f"{path.name}: {node.name} has {length} lines (limit 90)"


def test_argparse_only_in_the_command_layer() -> None:
    offenders = [
        str(p.relative_to(PACKAGE))
        for p in MODULES
        if "import argparse" in p.read_text() and p.parent.name != "commands" and p.name != "cli.py"
    ]
    assert offenders == []


def test_no_development_paths_in_the_library() -> None:
    assert [p.name for p in MODULES if "../shared" in p.read_text() or '"shared"' in p.read_text()] == []
