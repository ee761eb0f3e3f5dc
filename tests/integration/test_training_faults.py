"""Training faults end with the documented failure-file text; kill -9 loses nothing.

The expected texts are read from docs/RELIABILITY.md's fault table, so the document is the test.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from PIL import Image

from container_train.main import main
from tests.conftest import REPO, TINY_ARGS, training_env

pytestmark = pytest.mark.slow
DOC = REPO / "docs" / "RELIABILITY.md"


def documented_faults() -> dict[str, str]:
    text = DOC.read_text()
    table = text[text.index("<!-- fault table"):text.index("<!-- end of fault table")]
    return {m.group(1): m.group(2)
            for m in re.finditer(r"^\| ([a-z-]+) \| `(.+)` \|$", table, re.MULTILINE)}


def _images(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (40, 40), (i * 30 % 255, 90, 200)).save(folder / f"{i}.jpg")


def _dataset(root: Path, train=("a", "b"), valid=("a", "b"), counts=None) -> Path:
    counts = counts or {}
    for split, classes in (("train", train), ("valid", valid)):
        for name in classes:
            _images(root / split / name, counts.get((split, name), 3))
    return root


def _cannot_run(reason: str) -> None:
    """Skip where a row cannot run; under CI=true (CI runs as root) fail instead, so that the
    root-only rows cannot pass there by not running."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}: required under CI=true")
    pytest.skip(reason)


@contextmanager
def _tmpfs(path: Path, options: str) -> Iterator[Path]:
    path.mkdir(parents=True)
    if os.geteuid() != 0:
        _cannot_run("needs root to mount a tmpfs")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)]).returncode:
        _cannot_run("cannot mount a tmpfs here")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _failure_line(root: Path, monkeypatch, args: list[str]) -> str:
    monkeypatch.setenv("SM_OUTPUT_DIR", str(root / "output"))
    assert main([*TINY_ARGS, "--image-size", "32", "--epochs", "1", *args]) == 1
    return (root / "output" / "failure").read_text().splitlines()[0]


def _paths(root: Path, model_dir: Path | None = None) -> list[str]:
    return ["--model-dir", str(model_dir or root / "model"),
            "--output-data-dir", str(root / "out")]


def test_every_documented_fault_is_tested():
    assert set(documented_faults()) == {
        "corrupt-images", "empty-class", "classes-differ", "missing-channel",
        "malformed-hyperparameter", "unwritable-model-dir", "full-checkpoint-disk"}


@pytest.mark.parametrize("fault", sorted(documented_faults()))
def test_fault_failure_text(fault, tmp_path, monkeypatch):
    root = tmp_path
    data = root / "data"
    args: list[str] = ["--data-dir", str(data), *_paths(root)]
    if fault == "corrupt-images":
        _dataset(data, counts={("train", "a"): 4, ("train", "b"): 0}, train=("a",), valid=("a",))
        for i in range(2):
            (data / "train" / "a" / f"bad{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    elif fault == "empty-class":
        _dataset(data)
        shutil.rmtree(data / "train" / "b")
        (data / "train" / "b").mkdir()
    elif fault == "classes-differ":
        _dataset(data, valid=("a", "c"))
    elif fault == "missing-channel":
        _dataset(data)
        monkeypatch.setenv("SM_CHANNEL_TRAIN", str(data / "train"))
        monkeypatch.setenv("SM_CHANNEL_TEST", str(data / "valid"))
        args = _paths(root)
    elif fault == "malformed-hyperparameter":
        _dataset(data)
        args += ["--batch-size", "big"]
    if fault == "unwritable-model-dir":
        _dataset(data)
        with _tmpfs(root / "ro", "ro,size=1m"):
            line = _failure_line(root, monkeypatch, [
                "--data-dir", str(data), *_paths(root, root / "ro" / "model")])
    elif fault == "full-checkpoint-disk":
        _dataset(data)
        line = _full_checkpoint_disk(root, monkeypatch, args)
    else:
        line = _failure_line(root, monkeypatch, args)
    assert line == documented_faults()[fault].format(root=root)


def _full_checkpoint_disk(root: Path, monkeypatch, args: list[str]) -> str:
    """The disk fills at epoch 2's checkpoint: room for one checkpoint and a half, so epoch 1's
    is written and epoch 2's temp file cannot be. Epoch 1's must survive, whole and loadable
    (the checkpoint is written to a temp file and renamed), and no temp file may be left."""
    sizing = root / "sizing"
    assert main([*TINY_ARGS, "--image-size", "32", "--epochs", "1", *args[:2],
                 *_paths(sizing), "--checkpoint-dir", str(sizing / "ckpt")]) == 0
    size = (sizing / "ckpt" / "checkpoint-latest.pt").stat().st_size
    shutil.rmtree(sizing)
    full = root / "full"
    with _tmpfs(full, f"size={size * 3 // 2}"):
        monkeypatch.setenv("SM_OUTPUT_DIR", str(root / "output"))
        assert main([*TINY_ARGS, "--image-size", "32", "--epochs", "2", *args,
                     "--checkpoint-dir", str(full)]) == 1
        survivor = torch.load(full / "checkpoint-latest.pt", weights_only=True)
        assert survivor["epoch"] == 1, survivor["epoch"]
        assert not (full / "checkpoint-latest.pt.tmp").exists()
    return (root / "output" / "failure").read_text().splitlines()[0]


def _job(root: Path, data: Path) -> list[str]:
    return [sys.executable, "-m", "container_train", "--data-dir", str(data),
            "--model-dir", str(root / "model"), "--output-data-dir", str(root / "out"),
            "--checkpoint-dir", str(root / "ckpt"), *TINY_ARGS, "--image-size", "48",
            "--batch-size", "4", "--log-interval", "1", "--epochs", "3",
            "--trainable-layers", "1", "--lr", "0.01"]


def test_kill_9_mid_epoch_resumes_to_identical_weights(color_data, tmp_path):
    straight = subprocess.run(_job(tmp_path / "straight", color_data), env=training_env(),
                              capture_output=True, text=True, timeout=900)
    assert straight.returncode == 0, straight.stdout[-2000:]

    root = tmp_path / "killed"
    proc = subprocess.Popen(_job(root, color_data), env=training_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "[train] epoch 2/3 step 3/" in line:  # mid-epoch 2: epoch 1's checkpoint exists
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    checkpoint = torch.load(root / "ckpt" / "checkpoint-latest.pt", weights_only=True)
    assert checkpoint["epoch"] == 1 and not (root / "model" / "model.pt").exists()

    resumed = subprocess.run(_job(root, color_data), env=training_env(), capture_output=True,
                             text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-2000:]
    assert "after epoch 1" in resumed.stdout and "[train] epoch 1/3" not in resumed.stdout
    assert "#metrics epoch=2" in resumed.stdout and "#metrics epoch=3" in resumed.stdout
    a = torch.load(tmp_path / "straight" / "model" / "model.pt", weights_only=True)
    b = torch.load(root / "model" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_extreme_shape_fails_the_job_with_a_failure_file(tmp_path, monkeypatch):
    """A 1x200000 PNG (a few hundred bytes) would be resized by evaluation to 37 x 7,400,000
    pixels: serving's guard, now in scan_split, reports it as too large before any resize
    (before, the job could be OOM-killed with no failure file)."""
    data = _dataset(tmp_path / "data")
    Image.new("L", (1, 200_000)).save(data / "train" / "a" / "thin.png")
    line = _failure_line(tmp_path, monkeypatch, ["--data-dir", str(data), *_paths(tmp_path)])
    assert line == (
        f"1 of 7 images in 'train' are too large (14.3% > max-corrupt-fraction 5.0%): "
        f"{data}/train/a/thin.png (too large: image is 1x200000 pixels; resizing its short side "
        f"to 37 would make 273800000 pixels; the limit is 40000000 pixels)")
