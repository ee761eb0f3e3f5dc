"""`make demo` as most users run it: not root, a member of the docker group, Docker already
running, no root tools at hand. A fresh user, a clone of the repository, and `apt-get`, `apt`,
`sudo`, `debootstrap` and `dockerd` shadowed on PATH by stubs that fail loudly: the demo must
build, train, serve and answer with a top-k prediction without calling any of them.

Needs root to create the user (CI runs as root), the docker group owning the daemon's socket,
and the images already built (dev/setup_docker.sh): the demo's own build is then a cache hit,
as it is for a user's second run.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.container.conftest import remove_containers, require_docker

REPO = Path(__file__).resolve().parents[2]
TRAIN_IMAGE = "sagemaker-resnet50-train:latest"  # the names `make demo` uses
SERVE_IMAGE = "sagemaker-resnet50-serve:latest"
ROOT_TOOLS = ("apt-get", "apt", "sudo", "debootstrap", "dockerd")
RUN_ID = uuid.uuid4().hex[:6]

pytestmark = pytest.mark.container


def _fail_or_skip(reason: str) -> None:
    if os.environ.get("CONTAINER_TESTS_REQUIRED") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def docker_user():
    require_docker(TRAIN_IMAGE, SERVE_IMAGE)
    if os.geteuid() != 0:
        _fail_or_skip("creating a test user needs root")
    socket_group = subprocess.run(["stat", "-c", "%G", "/var/run/docker.sock"],
                                  capture_output=True, text=True).stdout.strip()
    if socket_group != "docker":
        _fail_or_skip(f"the Docker socket belongs to group {socket_group!r}, not 'docker'")
    name = f"newcomer{RUN_ID}"
    subprocess.run(["useradd", "--create-home", "--groups", "docker", "--shell", "/bin/bash",
                    name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", "--remove", name], capture_output=True)


def _clone_as(user: pwd.struct_passwd) -> Path:
    """A clone of this repository, plus the working tree's uncommitted files (so a developer's
    run tests what is on disk; in CI the two are the same), owned by the user."""
    clone = Path(user.pw_dir) / "sagemaker-resnet50"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    changed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-m", "-o", "--exclude-standard",
                              "-z"], capture_output=True, text=True, check=True).stdout
    for rel in filter(None, changed.split("\0")):
        if (REPO / rel).is_file():
            (clone / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, clone / rel)
    subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", user.pw_dir], check=True)
    return clone


def _stubs(user: pwd.struct_passwd) -> tuple[Path, Path]:
    stubs = Path(user.pw_dir) / "stubs"
    stubs.mkdir()
    called = Path(user.pw_dir) / "stub-calls.log"
    for tool in ROOT_TOOLS:
        (stubs / tool).write_text(
            f'#!/bin/sh\necho "{tool} $*" >> {called}\n'
            f'echo "STUB: make demo called {tool} (it must not need root tools)" >&2\nexit 97\n')
        (stubs / tool).chmod(0o755)
    subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(stubs)], check=True)
    return stubs, called


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_make_demo_as_a_docker_group_user_without_root_tools(docker_user):
    clone = _clone_as(docker_user)
    stubs, called = _stubs(docker_user)
    container = f"pytest-newcomer-{RUN_ID}"
    env = {"HOME": docker_user.pw_dir, "USER": docker_user.pw_name, "LANG": "C.UTF-8",
           "PATH": f"{stubs}:/usr/local/bin:/usr/bin:/bin", "PORT": str(_free_port()),
           "SERVE_CONTAINER": container}
    try:
        proc = subprocess.run(
            ["runuser", "-u", docker_user.pw_name, "--", "env", "-i",
             *(f"{k}={v}" for k, v in env.items()), "make", "-C", str(clone), "demo"],
            capture_output=True, text=True, timeout=1500)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-5000:]
        assert not called.exists(), called.read_text()
        assert "STUB:" not in out

        # predict.sh prints the answer as indented JSON: from the last "{" line to its "}".
        lines = proc.stdout.splitlines()
        start = max(i for i, line in enumerate(lines) if line == "{")
        end = lines.index("}", start)
        top = json.loads("\n".join(lines[start:end + 1]))["predictions"][0]["top_k"]
        probabilities = [p["probability"] for p in top]
        assert len(top) == 3 and probabilities == sorted(probabilities, reverse=True)
        assert 0 < sum(probabilities) <= 1 + 1e-6
        classes = {"fishes", "monuments", "others", "renewable", "tools"}
        assert {p["label"] for p in top} <= classes

        # The summary: where things are, how to call again and stop; honest about the model.
        assert "model:" in out and "report:" in out and "call again: curl" in out
        assert f"docker rm -f {container}" in out
        assert (clone / "local_test/test_dir/output/data/report.html").is_file()
        manifest = json.loads((clone / "local_test/test_dir/model/manifest.json").read_text())
        if manifest["hyperparameters"]["weights"] == "none":
            assert "NOT meaningful" in out
        # No toolchain noise from the compiled variant, in training or in serving.
        train_log = (clone / "local_test/test_dir/logs/train.log").read_text()
        assert "Python.h" not in train_log
        serve_log = subprocess.run(["docker", "logs", container], capture_output=True,
                                   text=True).stderr
        assert "outdated pt2" not in serve_log
        # Progress was visible: every build step announced itself with where its log is.
        assert "full log:" in out
    finally:
        remove_containers(container)
        # The container wrote root-owned files into the user's clone: removed as root here.
        shutil.rmtree(clone, ignore_errors=True)
