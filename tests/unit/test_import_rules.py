"""The layers of docs/ARCHITECTURE.md, enforced: which package may import which.

Every ``import`` and ``from ... import`` in the product packages is read with ``ast``, function-
level (lazy) imports included, since a lazy import still runs on some path. A positive control
plants a violation in a scratch tree and checks the checker names it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# package -> top-level modules it must never import (docs/ARCHITECTURE.md, "What may import what")
HEAVY = {"torch", "torchvision", "numpy", "PIL"}
FORBIDDEN: dict[str, set[str]] = {
    # the contract packages sit at the bottom: stdlib only, so every side can import them
    "job_contract": HEAVY | {"model_artifact", "container_train", "container_serve", "drivers",
                             "sagemaker", "boto3"},
    "model_artifact": {"container_train", "container_serve", "drivers", "sagemaker", "boto3"},
    # training and serving meet only through model_artifact (and job_contract)
    "container_train": {"container_serve", "drivers", "bench", "sagemaker", "boto3"},
    "container_serve": {"container_train", "drivers", "bench", "sagemaker", "boto3"},
    # the drivers run on a laptop with the SDK, without torch
    "drivers": HEAVY | {"model_artifact", "container_serve", "container_train", "bench"},
}
# Named exceptions, each with its reason. local_tuning runs the training code in this process
# (`tune.py --local`): it is the one driver that needs the host venv with torch.
ALLOWED: dict[str, set[str]] = {
    "drivers/local_tuning.py": {"container_train", "torch", "numpy"},
}
# Driver commands are peers: none imports another (they share drivers.common and the modules
# named there). tuning_job dispatches `--local` to local_tuning lazily: one named exception.
DRIVER_COMMANDS = {"training_job", "tuning_job", "local_tuning", "deploy", "predict",
                   "transform"}
PEER_EXCEPTIONS = {("tuning_job", "local_tuning")}


def imported_modules(path: Path) -> set[str]:
    """Every absolute module name the file imports, at any depth of the code."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def violations(root: Path) -> list[str]:
    """'file: imports X' for each import a package's rule forbids."""
    found = []
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            allowed = ALLOWED.get(rel, set())
            names = imported_modules(path)
            reported: set[str] = set()
            for name in sorted(names, key=lambda n: (n.count("."), n)):  # shortest name first
                top = name.split(".")[0]
                if top in forbidden - allowed and top not in reported:
                    reported.add(top)
                    found.append(f"{rel}: imports {name}")
            found += _peer_violations(rel, package, names)
    return found


def _peer_violations(rel: str, package: str, names: set[str]) -> list[str]:
    me = Path(rel).stem
    if package != "drivers" or me not in DRIVER_COMMANDS:
        return []
    peers = {n.split(".")[1] for n in names if n.startswith("drivers.") and n.count(".") >= 1}
    return [f"{rel}: imports the driver drivers.{p}" for p in sorted(peers & DRIVER_COMMANDS)
            if p != me and (me, p) not in PEER_EXCEPTIONS]


def test_the_product_follows_the_import_rules():
    assert violations(REPO) == []


def test_every_product_package_has_a_rule():
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests", "bench"}
    assert packages == set(FORBIDDEN), "a new package needs its line in FORBIDDEN and the doc"


@pytest.mark.parametrize("rel, code, expected", [
    ("container_serve/planted.py", "from container_train.model import create_model",
     "container_serve/planted.py: imports container_train.model"),
    ("drivers/planted.py", "def f():\n    import torch",  # lazy imports count
     "drivers/planted.py: imports torch"),
    ("job_contract/planted.py", "import numpy as np", "job_contract/planted.py: imports numpy"),
    ("drivers/predict.py", "from drivers import deploy",
     "drivers/predict.py: imports the driver drivers.deploy"),
    ("drivers/deploy.py", "from drivers.training_job import load_best",
     "drivers/deploy.py: imports the driver drivers.training_job"),
])
def test_the_checker_finds_a_planted_violation(tmp_path, rel, code, expected):
    for name in FORBIDDEN:
        (tmp_path / name).mkdir()
    (tmp_path / rel).write_text(code + "\n")
    assert violations(tmp_path) == [expected]


def test_shared_driver_modules_are_not_peers(tmp_path):
    (tmp_path / "drivers").mkdir()
    (tmp_path / "drivers" / "deploy.py").write_text("from drivers import common, aws_settings\n")
    assert violations(tmp_path) == []
