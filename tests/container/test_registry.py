"""build_and_push.sh pushes to a real registry (Debian's docker-registry on 127.0.0.1) and the
images pull back. The images pushed here are small stand-ins tagged under test repository
names: the push path does not depend on what is inside, and the 6 GB product images would
make this test take a quarter of an hour (their build path runs in dev/setup_docker.sh, which
calls build_and_push.sh --no-push)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OS_IMAGE = os.environ.get("OS_IMAGE", "sagemaker-resnet50-os:bookworm")
RUN_ID = uuid.uuid4().hex[:8]

pytestmark = pytest.mark.container


def _docker(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, **kw)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    problems = []
    if shutil.which("docker") is None or _docker("info", check=False).returncode:
        problems.append("no Docker daemon (dev/setup_docker.sh starts one)")
    elif _docker("image", "inspect", OS_IMAGE, check=False).returncode:
        problems.append(f"base image {OS_IMAGE} missing (dev/setup_docker.sh builds it)")
    if shutil.which("docker-registry") is None:
        problems.append("docker-registry not installed (apt-get install docker-registry)")
    if problems:
        if os.environ.get("CONTAINER_TESTS_REQUIRED") == "1":
            pytest.fail("; ".join(problems))
        pytest.skip("; ".join(problems))
    root = tmp_path_factory.mktemp("registry")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (root / "config.yml").write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(root / "config.yml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(50):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
            break
        except OSError:
            time.sleep(0.2)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


def test_push_to_a_local_registry_and_pull_back(registry, tmp_path):
    repos = {"train": f"pytest-{RUN_ID}-train", "serve": f"pytest-{RUN_ID}-serve"}
    (tmp_path / "Dockerfile").write_text(f"FROM {OS_IMAGE}\nARG ROLE\nLABEL role=$ROLE\n")
    created = []
    try:
        for role, repo in repos.items():
            _docker("build", "-t", f"{repo}:latest", "--build-arg", f"ROLE={role}",
                    str(tmp_path))
            created.append(f"{repo}:latest")
        env = {**os.environ, "TRAIN_REPO": repos["train"], "SERVE_REPO": repos["serve"],
               "IMAGE_URIS_FILE": str(tmp_path / "image_uris.json")}
        proc = subprocess.run([str(REPO / "build_and_push.sh"), "--skip-build", "--registry",
                               registry], env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        uris = json.loads((tmp_path / "image_uris.json").read_text())

        for role, repo in repos.items():
            with urllib.request.urlopen(f"http://{registry}/v2/{repo}/tags/list") as resp:
                tags = set(json.load(resp)["tags"])
            assert "latest" in tags and "0.1.0" in tags
            assert uris[role].rsplit(":", 1)[1] in tags and uris[role].startswith(registry)
            # Drop every local copy under the registry's name, then pull it back.
            local = [line for line in _docker("image", "ls", "--format",
                                              "{{.Repository}}:{{.Tag}}").stdout.split()
                     if line.startswith(f"{registry}/{repo}:")]
            _docker("rmi", *local)
            _docker("pull", uris[role])
            created.append(uris[role])
            label = _docker("image", "inspect", "-f", "{{.Config.Labels.role}}",
                            uris[role]).stdout.strip()
            assert label == role
    finally:
        leftovers = [line for line in _docker("image", "ls", "--format",
                                              "{{.Repository}}:{{.Tag}}").stdout.split()
                     if f"pytest-{RUN_ID}-" in line]
        if leftovers:
            _docker("rmi", "-f", *leftovers, check=False)
