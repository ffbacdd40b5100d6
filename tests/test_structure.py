"""The shape of the code: one concern a module, readable in one sitting, the CLI in commands/."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "psconv"
# The limits hold for every Python file a reader opens: the package, its tests, benchmarks and
# experiments.
READABLE = sorted(
    p for d in ("psconv", "tests", "benchmarks", "experiments") for p in (ROOT / d).rglob("*.py")
)
MODULES = sorted(PACKAGE.rglob("*.py"))
NATIVE = sorted(p for p in (ROOT / "csrc").iterdir() if p.suffix in {".cpp", ".h", ".inc"})


@pytest.mark.parametrize("path", READABLE, ids=[str(p.relative_to(ROOT)) for p in READABLE])
def test_module_and_function_sizes(path: Path) -> None:
    source = path.read_text()
    assert source.count("\n") <= 500, f"{path.name} has {source.count(chr(10))} lines (limit 500)"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= 90, f"{path.name}: {node.name} has {length} lines (limit 90)"


def native_functions(source: str) -> list[tuple[str, int]]:
    """(signature, lines) of each top-level function: a definition starts at column 0 and ends
    at the next line that is a lone closing brace (the layout clang-format gives them)."""
    found, start = [], None
    lines = source.splitlines()
    for i, line in enumerate(lines):
        if start is None:
            head = line.split("(")[0]
            if "(" in line and line[:1].isalpha() and not head.startswith(("typedef", "const ")):
                end = next(
                    (j for j in range(i, len(lines)) if lines[j].rstrip().endswith(("{", ";", "}"))), i
                )
                if lines[end].rstrip().endswith("{") and not head.startswith(("struct", "namespace")):
                    start = i
        elif line == "}":
            found.append((lines[start][:60], i - start + 1))
            start = None
    return found


def test_native_function_finder_measures_a_definition() -> None:
    source = "int f(int a,\n      int b) {\n    return a + b;\n}\nint g(void);\nint h() { return 1; }\n"
    assert native_functions(source) == [("int f(int a,", 4)]


@pytest.mark.parametrize("path", NATIVE, ids=[p.name for p in NATIVE])
def test_native_file_and_function_sizes(path: Path) -> None:
    source = path.read_text()
    assert source.count("\n") <= 500, f"{path.name} has {source.count(chr(10))} lines (limit 500)"
    for signature, length in native_functions(source):
        assert length <= 90, f"{path.name}: {signature} has {length} lines (limit 90)"


def test_argparse_only_in_the_command_layer() -> None:
    offenders = [
        str(p.relative_to(PACKAGE))
        for p in MODULES
        if "import argparse" in p.read_text() and p.parent.name != "commands" and p.name != "cli.py"
    ]
    assert offenders == []


def test_no_development_paths_in_the_library() -> None:
    assert [p.name for p in MODULES if "../shared" in p.read_text() or '"shared"' in p.read_text()] == []


@pytest.mark.parametrize("script", sorted((ROOT / "benchmarks").glob("*.sh")), ids=lambda p: p.name)
def test_benchmark_scripts_parse_and_name_files_that_exist(script: Path) -> None:
    """A shell script is run rarely (on a new CPU): a syntax error or a renamed file it calls
    must show here, not there."""
    parsed = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert parsed.returncode == 0, parsed.stderr
    named = re.findall(r"(?:benchmarks|results)/[\w./-]+\.(?:py|json)", script.read_text())
    assert named and [n for n in named if not (ROOT / n).is_file()] == []
