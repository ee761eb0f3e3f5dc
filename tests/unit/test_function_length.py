"""Product functions fit on a screen: none is longer than 60 lines (def to last line).

The renovation (issue 18) brought the longest from 174 lines (the training run's hub) to 60;
this keeps it there. A planted long function checks that the measure sees one.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRODUCT = ("job_contract", "model_artifact", "container_train", "container_serve", "drivers",
           "scripts")
LIMIT = 60


def function_lengths(root: Path) -> list[tuple[int, str]]:
    """(lines, 'path:line name') of every function and method, longest first."""
    rows = []
    for package in PRODUCT:
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = node.end_lineno - node.lineno + 1
                    rows.append((length, f"{path.relative_to(root)}:{node.lineno} {node.name}"))
    return sorted(rows, reverse=True)


def test_no_product_function_is_longer_than_a_screen():
    assert [row for row in function_lengths(REPO) if row[0] > LIMIT] == []


def test_the_measure_finds_a_planted_long_function(tmp_path):
    (tmp_path / "drivers").mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(LIMIT))
    (tmp_path / "drivers" / "long.py").write_text(f"def long():\n{body}")
    assert function_lengths(tmp_path) == [(LIMIT + 1, "drivers/long.py:1 long")]
