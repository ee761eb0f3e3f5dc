"""`docker stop` in the middle of an epoch on the real training image (toolkit and all), then a
restart on the same checkpoint directory: the final weights equal an uninterrupted run's, bit
for bit (docs/training.md, "Checkpoints, resuming and interruptions")."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import torch

from job_contract.images import local_image
from tests.container.conftest import remove_containers, require_docker

REPO = Path(__file__).resolve().parents[2]
TRAIN_IMAGE = local_image("train")
PREFIX = f"pytest-{uuid.uuid4().hex[:8]}-stop"
HPS = {"epochs": "2", "image-size": "48", "batch-size": "4", "weights": "none",
       "num-workers": "0", "log-interval": "1", "seed": "7", "compile": "false",
       "trainable-layers": "1", "lr": "0.01"}
STOP_TIMEOUT = 30  # docker stop's grace period: the contract is a checkpoint within 30 s

pytestmark = pytest.mark.container


@pytest.fixture(scope="module", autouse=True)
def _docker_ready():
    require_docker(TRAIN_IMAGE)
    yield
    remove_containers(PREFIX)


def _docker_run(name: str, base: Path, data: Path, checkpoints: Path, *, detach: bool):
    """`docker run IMAGE train` with base/ as /opt/ml (model, output, input config)."""
    config = base / "input" / "config"
    shutil.copytree(REPO / "local_test" / "test_dir" / "input" / "config", config)
    (config / "hyperparameters.json").write_text(json.dumps(HPS))
    mounts = ["-v", f"{checkpoints}:/opt/ml/checkpoints"]
    for sub in ("input", "model", "output"):
        (base / sub).mkdir(parents=True, exist_ok=True)
        mounts += ["-v", f"{base / sub}:/opt/ml/{sub}"]
    checkpoints.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        ["docker", "run", *(["-d"] if detach else ["--rm"]), "--name", name,
         "--hostname", "algo-1", "--add-host", "algo-1:127.0.0.1", *mounts,
         "-v", f"{data}:/opt/ml/input/data/training:ro", TRAIN_IMAGE, "train"],
        capture_output=True, text=True, timeout=900)


def _weights(base: Path) -> dict[str, torch.Tensor]:
    return torch.load(base / "model" / "model.pt", weights_only=True)


def _stop_mid_epoch(name: str, marker: str) -> tuple[int, float, str]:
    """Follow the container's log until ``marker``, `docker stop` it; (exit code, s, log)."""
    follow = subprocess.Popen(["docker", "logs", "-f", name], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    assert follow.stdout is not None
    seen = []
    for line in follow.stdout:
        seen.append(line)
        if marker in line:
            break
    start = time.monotonic()
    subprocess.run(["docker", "stop", "-t", str(STOP_TIMEOUT), name], check=True,
                   capture_output=True, timeout=STOP_TIMEOUT + 30)
    seconds = time.monotonic() - start
    follow.wait(timeout=30)
    code = int(subprocess.run(["docker", "wait", name], capture_output=True, text=True,
                              timeout=30).stdout.strip())
    log = subprocess.run(["docker", "logs", name], capture_output=True, text=True).stdout
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    return code, seconds, log + "".join(seen)


def test_docker_stop_mid_epoch_then_restart_gives_identical_weights(color_data, tmp_path):
    straight = _docker_run(f"{PREFIX}-straight", tmp_path / "straight", color_data,
                           tmp_path / "straight-ckpt", detach=False)
    assert straight.returncode == 0, (straight.stdout + straight.stderr)[-3000:]

    checkpoints = tmp_path / "ckpt"
    started = _docker_run(f"{PREFIX}-first", tmp_path / "first", color_data, checkpoints,
                          detach=True)
    assert started.returncode == 0, started.stderr
    code, seconds, log = _stop_mid_epoch(f"{PREFIX}-first", "[train] epoch 2/2 step 3/8")
    # 143: the script saved and exited; 137 would mean docker had to SIGKILL after 30 s.
    assert code == 143, log[-3000:]
    assert seconds < STOP_TIMEOUT, seconds
    saved = torch.load(checkpoints / "checkpoint-latest.pt", weights_only=True)
    steps = saved["mid_epoch"]["progress"][0]["steps"]
    assert saved["mid_epoch"]["epoch"] == 2 and 3 <= steps < 8, saved["mid_epoch"]
    failure = (tmp_path / "first" / "output" / "failure").read_text().splitlines()[0]
    assert failure.startswith(f"stopped by SIGTERM: stopped in epoch 2 after step {steps};")
    assert not (tmp_path / "first" / "model" / "model.pt").exists()
    print(f"docker stop took {seconds:.1f} s; stopped after step {steps} of 8")

    resumed = _docker_run(f"{PREFIX}-resumed", tmp_path / "resumed", color_data, checkpoints,
                          detach=False)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    assert f"in epoch 2 after step {steps}" in resumed.stdout
    assert f"[train] epoch 2/2 step {steps + 1}/8" in resumed.stdout
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
