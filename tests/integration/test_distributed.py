"""Data-parallel training on CPU with gloo, started the way SageMaker starts it: one process per
host, told SM_HOSTS / SM_CURRENT_HOST, each launching torchrun with hosts[0] as rendezvous.
Two "hosts" on this machine share 127.0.0.1 through MASTER_ADDR."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys

import pytest
import torch

from container_train.distributed import Topology, launcher_argv, topology_from_env
from tests.conftest import training_env

pytestmark = pytest.mark.slow
HOSTS = ["algo-1", "algo-2"]
# Same global batch either way: 2 ranks x 4 images vs 1 process x 8 images.
COMMON = ["--weights", "none", "--image-size", "32", "--num-workers", "0", "--epochs", "2",
          "--augment", "false", "--trainable-layers", "0", "--lr", "0.001", "--log-interval", "1"]


def test_topology_and_launcher_arguments():
    topo = topology_from_env({"SM_HOSTS": json.dumps(["algo-2", "algo-1"]),
                              "SM_CURRENT_HOST": "algo-2", "SM_NUM_GPUS": "4"})
    assert (topo.node_rank, topo.world_size, topo.procs_per_host) == (1, 8, 4)
    argv = launcher_argv(topo, ["--epochs", "1"], environ={})
    assert argv[:5] == ["--nnodes=2", "--node_rank=1", "--nproc_per_node=4",
                        "--master_addr=algo-1", "--master_port=29500"]
    assert argv[-4:] == ["-m", "container_train", "--epochs", "1"]
    cpu = Topology(["algo-1", "algo-2"], "algo-1", 0)
    assert cpu.world_size == 2 and cpu.procs_per_host == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _job(root, data, batch_size: int, host: str | None, port: int):
    env = training_env()
    if host:
        env.update(SM_HOSTS=json.dumps(HOSTS), SM_CURRENT_HOST=host, SM_NUM_GPUS="0",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    out = root / (host or "single")
    cmd = [sys.executable, "-m", "container_train", "--data-dir", str(data),
           "--model-dir", str(out / "model"), "--output-data-dir", str(out / "data"),
           "--checkpoint-dir", str(out / "ckpt"), "--batch-size", str(batch_size), *COMMON]
    return out, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)


def test_two_hosts_match_one_process_with_the_same_global_batch(color_data, tmp_path):
    port = _free_port()
    jobs = [_job(tmp_path, color_data, 4, host, port) for host in HOSTS]
    logs = {}
    for (_out, proc), host in zip(jobs, HOSTS, strict=True):
        logs[host] = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, logs[host][-3000:]
    single_out, single = _job(tmp_path, color_data, 8, None, port)
    single_log = single.communicate(timeout=600)[0]
    assert single.returncode == 0, single_log[-3000:]

    # Both ranks took part, each on its own half of the same permutation.
    shards = {}
    for host, rank in (("algo-1", 0), ("algo-2", 1)):
        match = re.search(rf"\[rank {rank}/2\] epoch 1: train shard of (\d+) images starts "
                          r"\[([\d, ]+)\]", logs[host])
        assert match, logs[host][-2000:]
        assert int(match.group(1)) == 16  # 32 training images / 2 ranks
        shards[host] = [int(i) for i in match.group(2).split(",")]
    assert not set(shards["algo-1"]) & set(shards["algo-2"])

    # Only rank 0 (algo-1) writes the artifact, checkpoints, reports and metric lines.
    assert (tmp_path / "algo-1" / "model" / "model.pt").exists()
    assert (tmp_path / "algo-1" / "ckpt" / "checkpoint-latest.pt").exists()
    assert not (tmp_path / "algo-2" / "model" / "model.pt").exists()
    assert not (tmp_path / "algo-2" / "ckpt" / "checkpoint-latest.pt").exists()
    assert "#metrics" in logs["algo-1"] and "#metrics" not in logs["algo-2"]

    # Same data, same global batch, same seed, BatchNorm frozen, no augmentation: DDP's
    # averaged gradients equal the single process's up to float32 summation order. The head
    # is the only trained layer; its weights are O(1e-2), so 1e-5 absolute is ~1e-3 relative.
    dist_state = torch.load(tmp_path / "algo-1" / "model" / "model.pt", weights_only=True)
    single_state = torch.load(single_out / "model" / "model.pt", weights_only=True)
    start = torch.load(tmp_path / "algo-1" / "ckpt" / "checkpoint-latest.pt",
                       weights_only=True)
    assert start["epoch"] == 2
    for key in ("fc.weight", "fc.bias"):
        diff = (dist_state[key] - single_state[key]).abs().max().item()
        print(f"max |distributed - single| {key}: {diff:.3g}")
        assert diff < 1e-5, (key, diff)
    for key in ("conv1.weight", "layer4.2.bn3.running_var"):  # frozen: untouched and equal
        assert torch.equal(dist_state[key], single_state[key])
    # The job-wide metrics are the single process's (each image counted once).
    dist_final = json.loads((tmp_path / "algo-1" / "data" / "metrics.json").read_text())["final"]
    one_final = json.loads((single_out / "data" / "metrics.json").read_text())["final"]
    assert dist_final["valid_accuracy"] == pytest.approx(one_final["valid_accuracy"])
    assert dist_final["test_loss"] == pytest.approx(one_final["test_loss"], rel=1e-4)
