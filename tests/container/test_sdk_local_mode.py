"""SageMaker Python SDK v3 local mode trains the real training image, offline.

Runs local_test/sdk_local_mode.py with the drivers venv (.venv-drivers, made by
dev/setup_drivers_venv.sh; the SDK cannot share the host venv): ModelTrainer in
Mode.LOCAL_CONTAINER starts the image with docker compose and no `train` argument, and the job
must leave a model.tar.gz holding model.pt and manifest.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from job_contract.images import local_image

REPO = Path(__file__).resolve().parents[2]
DRIVERS_PYTHON = REPO / ".venv-drivers" / "bin" / "python"
TRAIN_IMAGE = local_image("train")
CLASSES = sorted(p.name for p in (REPO / "sample_data" / "photos5" / "train").iterdir())

pytestmark = pytest.mark.container


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CONTAINER_TESTS_REQUIRED") == "1":
        pytest.fail(f"container tests required but {reason}")
    pytest.skip(reason)


def test_sdk_v3_local_mode_trains_the_image(tmp_path):
    if shutil.which("docker") is None or subprocess.run(
        ["docker", "info"], capture_output=True
    ).returncode != 0:
        _skip_or_fail("no Docker daemon answers (dev/setup_docker.sh starts one)")
    if subprocess.run(["docker", "image", "inspect", TRAIN_IMAGE],
                      capture_output=True).returncode != 0:
        _skip_or_fail(f"image {TRAIN_IMAGE} is not built (dev/setup_docker.sh builds it)")
    if not DRIVERS_PYTHON.exists():
        _skip_or_fail("no .venv-drivers (dev/setup_drivers_venv.sh makes it)")
    if not (shutil.which("docker-compose") or subprocess.run(
            ["docker", "compose", "version"], capture_output=True).returncode == 0):
        _skip_or_fail("SDK local mode needs docker compose (apt-get install docker-compose)")

    # The folder name is the compose project name: unique per run, so runs never collide.
    root = tmp_path / f"sdk-local-{uuid.uuid4().hex[:8]}"
    proc = subprocess.run(
        [str(DRIVERS_PYTHON), str(REPO / "local_test" / "sdk_local_mode.py"),
         "--image", TRAIN_IMAGE, "--root", str(root)],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"model.pt", "manifest.json"} <= set(result["members"])
    assert result["class_names"] == CLASSES
    assert "Reporting training SUCCESS" in log
    # No job container left behind.
    left = subprocess.run(["docker", "ps", "-aq", "--filter", "name=sdk-local"],
                          capture_output=True, text=True).stdout.split()
    assert not left, left
