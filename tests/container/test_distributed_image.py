"""Two training containers on one Docker network, named algo-1 and algo-2 as SageMaker names
hosts, each given the resourceconfig.json SageMaker would write: they train together on CPU
with gloo, and match one container with the same global batch (see docs/training.md)."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from pathlib import Path

import pytest
import torch

from job_contract.images import local_image
from tests.conftest import make_color_dataset
from tests.container.conftest import remove_containers, require_docker

TRAIN_IMAGE = local_image("train")
RUN_ID = uuid.uuid4().hex[:8]
HOSTS = ["algo-1", "algo-2"]
HPS = {"weights": "none", "image-size": "32", "num-workers": "0", "epochs": "2",
       "augment": "false", "trainable-layers": "0", "lr": "0.001", "log-interval": "1"}

pytestmark = pytest.mark.container


@pytest.fixture(scope="module", autouse=True)
def _docker_ready():
    require_docker(TRAIN_IMAGE)
    yield
    remove_containers(f"pytest-{RUN_ID}")
    subprocess.run(["docker", "network", "rm", f"pytest-{RUN_ID}"], capture_output=True)


def _opt_ml(root: Path, host: str, hosts: list[str], batch_size: int) -> Path:
    base = root / host
    config = base / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps({**HPS,
                                                             "batch-size": str(batch_size)}))
    (config / "resourceconfig.json").write_text(json.dumps(
        {"current_host": host, "hosts": hosts, "network_interface_name": "eth0"}))
    (config / "inputdataconfig.json").write_text(json.dumps(
        {"training": {"TrainingInputMode": "File"}}))
    for sub in ("model", "output", "checkpoints"):
        (base / sub).mkdir()
    return base


def _start(base: Path, host: str, data: Path, network: str | None, role: str) -> str:
    name = f"pytest-{RUN_ID}-{role}"
    mounts = []
    for sub in ("input", "model", "output", "checkpoints"):  # not /opt/ml: it holds the code
        mounts += ["-v", f"{base / sub}:/opt/ml/{sub}"]
    # On the shared network the hosts find each other by name; alone, algo-1 is itself.
    net = (["--network", network, "--network-alias", host] if network
           else ["--network", "none", "--add-host", f"{host}:127.0.0.1"])
    subprocess.run(["docker", "run", "-d", "--name", name, "--hostname", host, *net, *mounts,
                    "-v", f"{data}:/opt/ml/input/data/training:ro", TRAIN_IMAGE, "train"],
                   check=True, capture_output=True)
    return name


def _finish(name: str) -> tuple[int, str]:
    code = int(subprocess.run(["docker", "wait", name], capture_output=True, text=True,
                              timeout=900).stdout.strip())
    logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
    return code, logs.stdout + logs.stderr


def test_two_containers_train_together_like_one_with_the_same_global_batch(tmp_path):
    data = make_color_dataset(tmp_path / "data", per_class={"train": 16, "valid": 6, "test": 6})
    network = f"pytest-{RUN_ID}"
    subprocess.run(["docker", "network", "create", network], check=True, capture_output=True)

    names = [_start(_opt_ml(tmp_path / "dist", host, HOSTS, 4), host, data, network, host)
             for host in HOSTS]
    single = _start(_opt_ml(tmp_path / "single", "algo-1", ["algo-1"], 8), "algo-1", data,
                    None, "single")
    results = {name: _finish(name) for name in [*names, single]}
    for name, (code, log) in results.items():
        assert code == 0, f"{name}:\n{log[-3000:]}"
    logs = [results[name][1] for name in names]

    # Both ranks took part, each on its own half of the permutation.
    shards = []
    for rank, log in enumerate(logs):
        match = re.search(rf"\[rank {rank}/2\] epoch 1: train shard of 16 images starts "
                          r"\[([\d, ]+)\]", log)
        assert match, log[-3000:]
        shards.append({int(i) for i in match.group(1).split(",")})
    assert not shards[0] & shards[1]

    # Only algo-1 wrote the artifact, the checkpoint and the metric lines.
    dist = tmp_path / "dist"
    assert (dist / "algo-1" / "model" / "model.pt").is_file()
    assert not (dist / "algo-2" / "model" / "model.pt").exists()
    assert not (dist / "algo-2" / "checkpoints" / "checkpoint-latest.pt").exists()
    assert "#metrics final" in logs[0] and "#metrics" not in logs[1]

    # Frozen BatchNorm, no augmentation, same seed and global batch: float32 summation order
    # is the only difference (measured 4e-9 on the host); 1e-5 leaves room for other CPUs.
    a = torch.load(dist / "algo-1" / "model" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "single" / "algo-1" / "model" / "model.pt", weights_only=True)
    for key in ("fc.weight", "fc.bias"):
        assert (a[key] - b[key]).abs().max().item() < 1e-5, key
