"""The drivers are peers over shared modules (docs/drivers.md, "Code layout"): no driver imports
another, and what they share is defined once."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

DRIVERS = Path(__file__).resolve().parents[2] / "drivers"
SHARED = {"common", "aws_settings", "requests_log", "search_space"}
# tune.py --local: the one command with two back ends; only tuning_job.main hands over.
ALLOWED = {("tuning_job", "main", "local_tuning")}


def driver_imports(path: Path) -> list[tuple[str, str]]:
    """(enclosing function or '<module>', imported drivers module) for every import."""
    found = []

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, ast.FunctionDef) else where
            if isinstance(child, ast.ImportFrom) and child.module:
                if child.module == "drivers":
                    found.extend((where, alias.name) for alias in child.names)
                elif child.module.startswith("drivers."):
                    found.append((where, child.module.split(".")[1]))
            elif isinstance(child, ast.Import):
                found.extend((where, a.name.split(".")[1]) for a in child.names
                             if a.name.startswith("drivers."))
            visit(child, inner)

    visit(ast.parse(path.read_text()), "<module>")
    return found


def modules() -> list[str]:
    return sorted(p.stem for p in DRIVERS.glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("module", modules())
def test_a_module_imports_only_shared_modules(module: str):
    wrong = [(where, imported) for where, imported in driver_imports(DRIVERS / f"{module}.py")
             if imported not in SHARED and (module, where, imported) not in ALLOWED]
    assert not wrong, f"drivers/{module}.py imports another driver: {wrong}"


def test_the_shared_modules_need_no_aws_library():
    # predict.py --url runs on the standard library alone (docs/drivers.md)
    code = ("import sys, drivers.common, drivers.predict, drivers.search_space; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'boto3', 'botocore', 'sagemaker', 'torch', 'optuna'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
