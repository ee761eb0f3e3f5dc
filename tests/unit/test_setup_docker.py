"""dev/setup_docker.sh on a user's machine: it uses the Docker that answers, installs nothing
without root, and says in one line what is missing and how to get it. Stand-in `docker`, `id`,
`apt-get` and `dockerd` on PATH; the real build path is a container test
(tests/container/test_newcomer.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "dev" / "setup_docker.sh"

DOCKER = """#!/bin/sh
echo "docker $*" >> "$CALLS"
case "$1" in
  info) [ -n "$DOCKER_INFO_ERROR" ] && { echo "$DOCKER_INFO_ERROR" >&2; exit 1; }; exit 0 ;;
  version) echo 27.3.1 ;;
esac
exit 0
"""
LOUD = '#!/bin/sh\necho "$(basename "$0") $*" >> "$CALLS"\nexit 97\n'


def _run(tmp_path: Path, *args: str, uid: int = 1000, info_error: str = "",
         tools: tuple[str, ...] = ("curl",)) -> tuple[subprocess.CompletedProcess, list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stubs = {"docker": DOCKER, "id": f"#!/bin/sh\necho {uid}\n", "apt-get": LOUD,
             "dockerd": LOUD, "sudo": LOUD}
    for tool in tools:
        stubs[tool] = "#!/bin/sh\nexit 0\n"
    for name, body in stubs.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    basic = tmp_path / "basic"
    basic.mkdir(exist_ok=True)
    for tool in ("bash", "cat", "dirname", "grep", "head", "seq", "sleep", "tail"):
        if not (basic / tool).exists():
            (basic / tool).symlink_to(shutil.which(tool))
    calls = tmp_path / "calls"
    env = {"PATH": f"{bin_dir}:{basic}", "CALLS": str(calls), "DOCKER_INFO_ERROR": info_error,
           "HOME": str(tmp_path)}
    proc = subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True,
                          text=True, timeout=60)
    return proc, calls.read_text().splitlines() if calls.exists() else []


def test_docker_that_answers_is_used_as_it_is(tmp_path):
    proc, calls = _run(tmp_path, "--no-build")
    assert proc.returncode == 0, proc.stderr
    assert "docker 27.3.1 answers" in proc.stderr
    assert not [c for c in calls if not c.startswith("docker ")]  # no apt-get, no dockerd


@pytest.mark.parametrize(("error", "advice"), [
    ("Cannot connect to the Docker daemon at unix:///var/run/docker.sock.",
     "start Docker Desktop or the docker service"),
    ("permission denied while trying to connect to the Docker daemon socket",
     "add yourself to the docker group"),
])
def test_no_daemon_without_root_says_how_in_one_line(tmp_path, error, advice):
    proc, calls = _run(tmp_path, "--no-build", info_error=error)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and advice in lines[0] and lines[0].startswith("setup_docker: error:")
    assert not [c for c in calls if not c.startswith("docker ")]


def test_missing_curl_without_root_is_named(tmp_path):
    proc, calls = _run(tmp_path, "--no-build", tools=())
    assert proc.returncode == 1
    assert "missing curl: install it" in proc.stderr
    assert not [c for c in calls if not c.startswith("docker ")]


def test_test_tools_are_asked_for_only_by_the_tests(tmp_path):
    demo, _ = _run(tmp_path, "--no-build")
    assert demo.returncode == 0  # the demo does not need a registry or compose
    tests, _ = _run(tmp_path, "--for-tests")
    assert tests.returncode == 1
    assert "missing docker-compose docker-registry" in tests.stderr
