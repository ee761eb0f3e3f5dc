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
