"""The layout rules of ARCHITECTURE.md that the source itself shows, read from its syntax:
which layer imports which, and functions a reader can hold (STYLE.md: ~100 lines at most)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "rootml"
# module (file under src/rootml) glob -> imports it must never make, at any depth.
FORBIDDEN = {
    "protocol.py": ("rootml.serve", "rootml.predict", "rootml.datasets", "rootml.train",
                    "rootml.export", "rootml.client", "torch", "uproot", "fastapi", "onnxruntime"),
    "client.py": ("rootml.serve", "rootml.predict", "rootml.datasets", "rootml.train",
                  "rootml.export", "torch", "uproot", "fastapi", "onnxruntime", "awkward"),
    "serve/*.py": ("rootml.predict", "rootml.client", "rootml.datasets", "rootml.train",
                   "torch", "uproot"),
    "predict/*.py": ("rootml.serve",),
}  # fmt: skip
MAX_FUNCTION_LINES = 100


def imports(path: Path) -> set[str]:
    """Every module `path` imports, at module level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


@pytest.mark.parametrize("pattern", list(FORBIDDEN))
def test_layers_import_only_what_they_may(pattern):
    paths = sorted(SRC.glob(pattern))
    assert paths, pattern
    for path in paths:
        bad = {
            name
            for name in imports(path)
            for prefix in FORBIDDEN[pattern]
            if name == prefix or name.startswith(prefix + ".")
        }
        assert not bad, f"{path.relative_to(SRC)} imports {sorted(bad)}"


def code_lines(node: ast.AST, lines: list[str]) -> int:
    """Lines of a function that hold code: not blank, not comments, not its docstring."""
    body = node.body
    doc = set()
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        doc = set(range(body[0].lineno, body[0].end_lineno + 1))
    return sum(
        1
        for number in range(node.lineno, node.end_lineno + 1)
        if number not in doc and lines[number - 1].strip()[:1] not in ("", "#")
    )


@pytest.mark.parametrize(
    "pattern",
    ["serve/*.py", "predict/*.py", "protocol.py", "client.py", "*.py", "datasets/*.py",
     "transforms/*.py", "train/*.py", "export/*.py"],
)  # fmt: skip
def test_no_function_a_reader_cannot_hold(pattern):
    for path in sorted(SRC.glob(pattern)):
        text = path.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = code_lines(node, lines)
                assert size <= MAX_FUNCTION_LINES, f"{path.name}:{node.name} has {size} lines"
