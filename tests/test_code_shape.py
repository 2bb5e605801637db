"""Code shape: no function in the package is 100 lines or longer (signature and docstring included),
so that each can be read on one screen."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ragimpute"
LIMIT = 100


def function_lengths() -> dict[str, int]:
    out = {}
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{path.name}:{node.name}"
                out[name] = max(out.get(name, 0), node.end_lineno - node.lineno + 1)
    return out


def test_the_package_is_found():
    assert len(function_lengths()) > 100


def test_no_function_is_100_lines_or_longer():
    long = {f: n for f, n in function_lengths().items() if n >= LIMIT}
    assert not long, f"split these functions (lines): {long}"
