"""num-workers=auto is resolved once per job: the count the DataLoaders use is the count
step_summary.json records (docs/training.md). A GPU host is simulated by patching torch.cuda."""

from __future__ import annotations

import pytest
import torch

from container_train import data, profiling
from container_train.config import parse_config

CUDA = torch.device("cuda", 0)


@pytest.fixture
def four_gpu_host(monkeypatch):
    """16 CPUs and 4 GPUs: one training process per GPU, so 4 CPUs feed each."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(data.os, "cpu_count", lambda: 16)


def test_auto_shares_the_host_cpus_among_its_gpu_processes(four_gpu_host):
    assert data.resolve_num_workers("auto", CUDA) == 4
    assert data.resolve_num_workers("auto", torch.device("cpu")) == 0
    assert data.resolve_num_workers("3", CUDA) == 3


def test_step_summary_records_the_count_the_job_resolved(four_gpu_host, tmp_path, sample_data):
    config = parse_config(["--data-dir", str(sample_data), "--model-dir", str(tmp_path / "m"),
                           "--output-data-dir", str(tmp_path / "out")])
    workers = data.resolve_num_workers(config.hyperparameters.num_workers, CUDA)
    callbacks = profiling.make_callbacks(config, is_main=True, device=CUDA,
                                         num_workers=workers)
    (recorder,) = [cb for cb in callbacks if isinstance(cb, profiling.StepRecorder)]
    assert recorder.context["num_workers"] == workers == 4
