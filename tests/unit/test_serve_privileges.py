"""container_serve.privileges: when serve may give up root, asked of the kernel as the user.

Runs as root (CI does; it needs root to switch ids) with the system user ``nobody`` standing in
for the image's ``model-server``. The container test (tests/container/test_images.py) checks
the real thing: which user each serving process runs as.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from container_serve import privileges
from container_serve.privileges import SERVE_USER, UNPRIVILEGED_PORT_START, why_stay_root


@pytest.fixture
def model_dir() -> Iterator[Path]:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("needs root to switch user ids: required under CI=true")
        pytest.skip("needs root to switch user ids")
    root = Path(tempfile.mkdtemp(prefix="privileges-"))  # under /tmp: nobody can reach it
    root.chmod(0o755)
    (root / "model.pt").write_bytes(b"w")
    (root / "manifest.json").write_text("{}")
    for path in root.iterdir():
        path.chmod(0o644)
    yield root
    shutil.rmtree(root)


NOBODY = pwd.getpwnam("nobody")


def test_a_world_readable_artifact_lets_serve_drop_root(model_dir: Path) -> None:
    assert why_stay_root(str(model_dir), 8080, NOBODY) is None
    assert os.geteuid() == 0 and os.getegid() == 0  # the check switched back


def test_an_unreadable_model_file_keeps_root_and_says_which(model_dir: Path) -> None:
    (model_dir / "model.pt").chmod(0o600)
    reason = why_stay_root(str(model_dir), 8080, NOBODY)
    assert reason == f"{model_dir / 'model.pt'} is not readable by {SERVE_USER}"
    assert os.geteuid() == 0


def test_requirements_txt_keeps_root(model_dir: Path) -> None:
    """The inference toolkit pip-installs code/requirements.txt into the image at start."""
    (model_dir / "code").mkdir()
    (model_dir / "code" / "requirements.txt").write_text("requests\n")
    assert "pip-installs" in (why_stay_root(str(model_dir), 8080, NOBODY) or "")


def test_no_serving_user_keeps_root(model_dir: Path) -> None:
    assert why_stay_root(str(model_dir), 8080, None) == f"no user {SERVE_USER!r} in this image"


def test_a_privileged_port_keeps_root(model_dir: Path) -> None:
    if int(UNPRIVILEGED_PORT_START.read_text()) <= 80:
        pytest.skip("every port is unprivileged here (as in Docker containers)")
    assert why_stay_root(str(model_dir), 80, NOBODY) == "port 80 is privileged here"


def test_drop_root_is_for_good_and_hands_over_the_runtime_dir(model_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    """In a forked child (the test process keeps root): after drop_root every uid and gid is
    the user's, root cannot be taken back, and the runtime dir (and what is in it) is theirs."""
    monkeypatch.setattr(privileges, "SERVE_USER", "nobody")
    runtime = model_dir / "runtime"
    (runtime / "logs").mkdir(parents=True)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, never return into pytest
        try:
            line = privileges.drop_root(str(model_dir), str(runtime), 8080)
            try:
                os.setuid(0)
                regained = "regained root"
            except PermissionError:
                regained = "root is gone"
            report = f"{line}|{os.getresuid()}|{os.getresgid()}|{os.getgroups()}|{regained}"
            os.write(write, report.encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as stream:
        line, uids, gids, groups, regained = stream.read().split("|")
    uid, gid = NOBODY.pw_uid, NOBODY.pw_gid
    assert line == f"running as nobody (uid {uid}), not root"
    assert (uids, gids, groups) == (str((uid,) * 3), str((gid,) * 3), "[]")
    assert regained == "root is gone"
    assert {(p.stat().st_uid, p.stat().st_gid) for p in (runtime, runtime / "logs")} == {
        (uid, gid)}
