"""The core's shape rules that ruff does not check: no function body over 60 lines, and the
orchestration module stays orchestration. (Complexity and parameter counts are ruff's C901 and
PLR0913, configured in pyproject.toml.)"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "quantcli"
MAX_BODY_LINES = 60
MAX_PIPELINE_LINES = 300


def _body_lines(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the docstring to the end: a command's option list and
    a long docstring are not logic."""
    body = function.body
    first = body[0]
    if len(body) > 1 and isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        first = body[1]
    return (function.end_lineno or first.lineno) - first.lineno + 1


def test_no_function_body_is_longer_than_sixty_lines() -> None:
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if (lines := _body_lines(node)) > MAX_BODY_LINES:
                long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these functions: " + ", ".join(long)


def test_pipeline_is_orchestration_only() -> None:
    lines = len((PACKAGE / "pipeline.py").read_text().splitlines())
    assert lines < MAX_PIPELINE_LINES, f"pipeline.py has {lines} lines; move what is not stage calls out"


def test_the_long_function_check_can_fail() -> None:
    source = "def f():\n    '''doc'''\n" + "    x = 1\n" * (MAX_BODY_LINES + 1)
    function = ast.parse(source).body[0]
    assert isinstance(function, ast.FunctionDef)
    assert _body_lines(function) == MAX_BODY_LINES + 1
