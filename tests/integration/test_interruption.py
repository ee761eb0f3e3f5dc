"""SIGTERM mid-epoch (spot interruption, StopTrainingJob): the job finishes the step, writes a
mid-epoch checkpoint and exits 143; the restarted job continues inside the epoch and, on CPU,
ends with the weights of an uninterrupted run, bit for bit (docs/training.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from container_train.config import parse_config
from container_train.engine import Callback
from container_train.interruption import Interrupted, StopSignal
from container_train.main import run
from tests.conftest import TINY_ARGS, training_env

pytestmark = pytest.mark.slow
STOP_SECONDS = 30  # the contract: checkpoint written and process gone within 30 s of SIGTERM


def _args(root: Path, data: Path, *extra: str) -> list[str]:
    return ["--data-dir", str(data), "--model-dir", str(root / "model"),
            "--output-data-dir", str(root / "out"), "--checkpoint-dir", str(root / "ckpt"),
            *TINY_ARGS, "--image-size", "48", "--batch-size", "4", "--log-interval", "1",
            "--epochs", "2", "--lr", "0.01", *extra]


def _job(root: Path, data: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "container_train", *_args(root, data, *extra)]


def _weights(root: Path) -> dict[str, torch.Tensor]:
    return torch.load(root / "model" / "model.pt", weights_only=True)


def _assert_same_result(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, different[:5]
    history = [json.loads((r / "out" / "metrics.json").read_text())["history"] for r in (a, b)]
    drop = ("epoch_time", "images_per_sec")
    assert [{k: v for k, v in h.items() if k not in drop} for h in history[0]] == \
        [{k: v for k, v in h.items() if k not in drop} for h in history[1]]


def _sigterm_at(cmd: list[str], env: dict[str, str], marker: str
                ) -> tuple[subprocess.Popen, list[str], float | None]:
    """Start a training process, send it SIGTERM when its log shows ``marker`` (and when),
    then read the rest of its output."""
    proc = subprocess.Popen(cmd, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    log, signalled = [], None
    for line in proc.stdout:
        log.append(line)
        if marker in line:
            proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            break
    log += proc.stdout.readlines()
    return proc, log, signalled


def test_sigterm_mid_epoch_then_restart_gives_identical_weights(color_data, tmp_path):
    extra = ("--trainable-layers", "1")
    straight = subprocess.run(_job(tmp_path / "straight", color_data, *extra),
                              env=training_env(), capture_output=True, text=True, timeout=900)
    assert straight.returncode == 0, straight.stdout[-2000:]

    root = tmp_path / "stopped"
    proc, log, signalled = _sigterm_at(_job(root, color_data, *extra), training_env(),
                                       "[train] epoch 2/2 step 3/8")
    proc.wait(timeout=60)
    stop_seconds = time.monotonic() - signalled
    text = "".join(log)
    assert proc.returncode == 128 + signal.SIGTERM, text[-2000:]
    assert stop_seconds < STOP_SECONDS, stop_seconds
    saved = torch.load(root / "ckpt" / "checkpoint-latest.pt", weights_only=True)
    mid = saved["mid_epoch"]
    assert saved["epoch"] == 1 and mid["epoch"] == 2, (saved["epoch"], mid)
    steps = mid["progress"][0]["steps"]
    assert 3 <= steps < 8, steps  # the step in flight finished, the epoch did not
    assert not (root / "model" / "model.pt").exists()
    print(f"stopped {stop_seconds:.1f} s after SIGTERM, after step {steps} of 8")

    resumed = subprocess.run(_job(root, color_data, *extra), env=training_env(),
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-2000:]
    assert f"in epoch 2 after step {steps}" in resumed.stdout
    assert "[train] epoch 1/2" not in resumed.stdout
    assert f"[train] epoch 2/2 step {steps}/8" not in resumed.stdout
    assert f"[train] epoch 2/2 step {steps + 1}/8" in resumed.stdout
    _assert_same_result(tmp_path / "straight", root)


class SignalAtStep(Callback):
    """Sends the process SIGTERM from inside the loop at (epoch, step), as a spot notice could."""

    def __init__(self, epoch: int, step: int, mode: str = "train"):
        self.epoch, self.step, self.mode, self.current = epoch, step, mode, 1
        self.phase = "train"

    def on_mode(self, mode):
        self.phase = mode

    def on_step_end(self, mode, step, loss, batch_size, data_seconds, compute_seconds):
        if (self.current, self.phase, step) == (self.epoch, self.mode, self.step):
            os.kill(os.getpid(), signal.SIGTERM)

    def on_epoch_end(self, epoch, metrics):
        self.current = epoch + 1


@pytest.fixture
def stop_signal():
    with StopSignal().installed() as stop:
        yield stop


@pytest.mark.parametrize(("layers", "mode", "step"), [
    ("0", "train", 3),  # frozen backbone: the head trains on cached features
    ("1", "eval", 1),  # stopped while validating: the epoch's training is kept
])
def test_stop_in_process_resumes_identically(color_data, tmp_path, stop_signal, layers, mode,
                                             step):
    extra = ("--trainable-layers", layers, "--cache-views", "3")
    run(parse_config(_args(tmp_path / "straight", color_data, *extra)))
    root = tmp_path / "stopped"
    with pytest.raises(Interrupted, match="stopped in epoch 2 after step"):
        run(parse_config(_args(root, color_data, *extra)), stop=stop_signal,
            callbacks=[SignalAtStep(2, step, mode)])
    mid = torch.load(root / "ckpt" / "checkpoint-latest.pt", weights_only=True)["mid_epoch"]
    assert (mid["epoch"], mid["progress"][0]["steps"]) == (2, step if mode == "train" else 8)
    run(parse_config(_args(root, color_data, *extra)), stop=StopSignal())
    _assert_same_result(tmp_path / "straight", root)


def test_image_entrypoint_passes_sigterm_through_the_toolkit(color_data, tmp_path):
    """The training image's PID 1 (container_train.entrypoint) runs the real toolkit; SIGTERM
    sent to it, as `docker stop` does, reaches the script, which checkpoints mid-epoch."""
    from tests.integration.test_training_run import _opt_ml

    base = tmp_path / "opt_ml"
    hps = {"weights": "none", "image-size": "48", "epochs": "1", "num-workers": "0",
           "batch-size": "4", "log-interval": "1", "compile": "false", "trainable-layers": "1"}
    env = _opt_ml(base, hps, {"training": color_data})
    proc, log, _ = _sigterm_at([sys.executable, "-m", "container_train.entrypoint", "train"],
                               env, "[train] epoch 1/1 step 3/8")
    proc.wait(timeout=STOP_SECONDS)
    assert proc.returncode == 128 + signal.SIGTERM, "".join(log)[-3000:]
    saved = torch.load(base / "checkpoints" / "checkpoint-latest.pt", weights_only=True)
    assert saved["mid_epoch"]["epoch"] == 1 and saved["mid_epoch"]["progress"][0]["steps"] >= 3
    failure = (base / "output" / "failure").read_text().splitlines()[0]
    assert failure.startswith("stopped by SIGTERM: stopped in epoch 1 after step"), failure
    assert not (base / "output" / "success").exists()
