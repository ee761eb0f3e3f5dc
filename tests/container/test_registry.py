"""build_and_push.sh pushes to a real registry (Debian's docker-registry on 127.0.0.1) and the
images pull back; docker/os_image.sh (OS_IMAGE=auto) takes the OS base from a registry when one
answers and falls back to the debootstrap base when none does. The images pushed here are small
stand-ins tagged under test repository names: the push path does not depend on what is inside,
and the 6 GB product images would make this test take a quarter of an hour (their build path
runs in dev/setup_docker.sh, which calls build_and_push.sh --no-push)."""

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
# The debootstrap base dev/setup_docker.sh leaves on machines without a registry (this one, CI).
OS_IMAGE = os.environ.get("LOCAL_OS_IMAGE", "sagemaker-resnet50-os:bookworm")
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


def _os_image(env: dict[str, str], path_prefix: str = "") -> subprocess.CompletedProcess:
    run_env = {**os.environ, "OS_IMAGE": "auto", "PULL_TIMEOUT": "30", **env}
    if path_prefix:
        run_env["PATH"] = f"{path_prefix}:{run_env['PATH']}"
    return subprocess.run([str(REPO / "docker" / "os_image.sh")], env=run_env,
                          capture_output=True, text=True, timeout=120)


def test_os_image_auto_takes_the_registry_image_pinned_by_digest(registry):
    """The registry branch: a slim Debian image served under the name the build asks for (here
    the local registry stands in for Docker Hub) is pulled by its digest and used."""
    name = f"{registry}/library/debian"
    _docker("tag", OS_IMAGE, f"{name}:bookworm-slim")
    try:
        push = _docker("push", f"{name}:bookworm-slim")
        digest = next(w for w in push.stdout.split() if w.startswith("sha256:"))
        pinned = f"{name}@{digest}"
        _docker("rmi", f"{name}:bookworm-slim")  # no local copy under the registry's name
        missing = "pytest-no-such-os:image"  # the fallback must not be what answers

        pulled = _os_image({"DEBIAN_SLIM_IMAGE": pinned, "LOCAL_OS_IMAGE": missing})
        assert pulled.returncode == 0, pulled.stderr
        assert pulled.stdout.strip() == pinned
        assert f"using {pinned} (pulled from its registry)" in pulled.stderr

        present = _os_image({"DEBIAN_SLIM_IMAGE": pinned, "LOCAL_OS_IMAGE": missing})
        assert present.stdout.strip() == pinned
        assert "(present locally)" in present.stderr
        # The same bytes as the base it was pushed from: a build on it reuses the layer cache.
        ids = {_docker("image", "inspect", "-f", "{{.Id}}", ref).stdout.strip()
               for ref in (pinned, OS_IMAGE)}
        assert len(ids) == 1
    finally:
        _docker("rmi", "-f", f"{name}:bookworm-slim", check=False)
        for ref in _docker("image", "ls", "--digests", "--format",
                           "{{.Repository}}@{{.Digest}}").stdout.split():
            if ref.startswith(f"{name}@"):
                _docker("rmi", ref, check=False)


def test_os_image_auto_falls_back_to_the_debootstrap_base(registry, tmp_path):
    """No registry answers (a closed port stands in): the local debootstrap base is used and
    the reason is said; without one, a non-root user gets a one-line way out, not a build."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    nowhere = f"127.0.0.1:{closed}/library/debian@sha256:{'0' * 64}"
    fallback = _os_image({"DEBIAN_SLIM_IMAGE": nowhere, "LOCAL_OS_IMAGE": OS_IMAGE})
    assert fallback.returncode == 0, fallback.stderr
    assert fallback.stdout.strip() == OS_IMAGE
    assert "no registry answered" in fallback.stderr and OS_IMAGE in fallback.stderr

    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "id").write_text("#!/bin/sh\necho 1000\n")  # not root
    (stubs / "debootstrap").write_text("#!/bin/sh\necho called >&2\nexit 97\n")
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    refused = _os_image({"DEBIAN_SLIM_IMAGE": nowhere, "LOCAL_OS_IMAGE": "pytest-no-such-os:x"},
                        path_prefix=str(stubs))
    assert refused.returncode == 1 and refused.stdout == ""
    assert "error: no registry answered" in refused.stderr
    assert "sudo docker/build_base_os.sh" in refused.stderr and "called" not in refused.stderr
