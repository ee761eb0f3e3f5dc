"""`python -m container_train --help` answers with the arguments and hyperparameters."""

from __future__ import annotations

import subprocess
import sys

import pytest

from container_train.config import PATH_ARGS
from job_contract.hyperparameters import SPECS
from tests.conftest import training_env


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_every_hyperparameter_and_path(flag):
    proc = subprocess.run([sys.executable, "-m", "container_train", flag], env=training_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("usage: python -m container_train")
    assert "Traceback" not in proc.stdout + proc.stderr
    for spec in SPECS:
        line = f"--{spec.name} ({spec.kind}, default {spec.default}; valid: "
        assert line + spec.describe_range() + ")" in proc.stdout, spec.name
    for name in PATH_ARGS:
        assert f"--{name}" in proc.stdout, name
