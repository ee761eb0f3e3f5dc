"""What every container test needs: a Docker daemon and the images, or a clear skip.

Under CONTAINER_TESTS_REQUIRED=1 (the test command and CI) a missing daemon or image fails the
run instead, so a broken set-up cannot pass as "all skipped".
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def docker_unavailable(*images: str) -> str | None:
    """Why the container tests cannot run here, or None."""
    if shutil.which("docker") is None:
        return "docker is not installed (dev/setup_docker.sh installs and starts it)"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "no Docker daemon answers (dev/setup_docker.sh starts one)"
    for image in images:
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode:
            return f"image {image} is not built (dev/setup_docker.sh builds it)"
    return None


def require_docker(*images: str) -> None:
    """Skip the calling module (fail it when container tests are required)."""
    reason = docker_unavailable(*images)
    if reason:
        if os.environ.get("CONTAINER_TESTS_REQUIRED") == "1":
            pytest.fail(f"container tests required but {reason}")
        pytest.skip(reason)


def remove_containers(name_prefix: str) -> None:
    """Nothing a test started may outlive it."""
    names = subprocess.run(["docker", "ps", "-aq", "--filter", f"name={name_prefix}"],
                           capture_output=True, text=True).stdout.split()
    if names:
        subprocess.run(["docker", "rm", "-f", *names], capture_output=True)
