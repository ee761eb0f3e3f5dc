"""Contract tests must not vanish without a failure where they are required (dev/test.sh, CI):
run this directory in an interpreter that cannot import the SageMaker SDK."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The drivers' venv with the SDK hidden: what a venv without it (e.g. .venv) looks like.
WITHOUT_SDK = ("import sys; sys.modules['sagemaker'] = None; import pytest; "
               "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', "
               "'tests/contract']))")


def run_without_sdk(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("CI", "CONTRACT_TESTS_REQUIRED", "PYTEST_ADDOPTS")}
    return subprocess.run([sys.executable, "-c", WITHOUT_SDK], cwd=REPO, text=True,
                          capture_output=True, env={**clean, **env}, timeout=300)


@pytest.mark.parametrize("env", [{"CONTRACT_TESTS_REQUIRED": "1"}, {"CI": "true"}])
def test_missing_sdk_fails_loudly_where_required(env):
    proc = run_without_sdk(**env)
    assert proc.returncode not in (0, 5), proc.stdout[-2000:]
    output = proc.stdout + proc.stderr
    assert "contract tests are required" in output and ".venv-drivers" in output


def test_missing_sdk_skips_elsewhere():
    proc = run_without_sdk()
    assert proc.returncode == 5, proc.stdout[-2000:]  # pytest: no tests collected
