"""The drivers venv's locks (dev/lock_drivers.sh): every pin of dev/requirements-drivers*.txt
is in its lock at that version, every locked package carries hashes (pip --require-hashes),
and what users install holds no test package."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO

DEV = REPO / "dev"
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==(\S+)", re.MULTILINE)


def pins(path: Path) -> dict[str, str]:
    return {n.lower().replace("_", "-"): v for n, v in PIN.findall(path.read_text())}


def locked(path: Path) -> dict[str, list[str]]:
    """name==version -> its hashes, from a lock in pip's --require-hashes format."""
    entries: dict[str, list[str]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", path.read_text()):
        match = PIN.match(block)
        if match:
            entries[f"{match[1]}=={match[2]}"] = re.findall(r"--hash=sha256:([0-9a-f]{64})",
                                                             block)
    return entries


@pytest.mark.parametrize("source, lock", [
    ("requirements-drivers.txt", "requirements-drivers.lock"),
    ("requirements-drivers-test.txt", "requirements-drivers-test.lock"),
])
def test_every_pin_is_locked_with_hashes(source, lock):
    entries = locked(DEV / lock)
    assert entries and all(entries.values()), [e for e, h in entries.items() if not h]
    versions = pins(DEV / lock)
    for name, version in pins(DEV / source).items():
        assert versions.get(name) == version, (name, version, versions.get(name))


def test_users_lock_has_no_test_packages_and_no_sdk_meta_package():
    users = pins(DEV / "requirements-drivers.lock")
    for name in ("pytest", "moto", "sagemaker", "sagemaker-serve", "sagemaker-mlops"):
        assert name not in users, name
    assert {"sagemaker-core", "sagemaker-train", "optuna", "setuptools"} <= set(users)
    # the test lock adds packages, it does not re-pin the users' ones
    assert not set(pins(DEV / "requirements-drivers-test.lock")) & set(users)
