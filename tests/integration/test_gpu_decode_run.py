"""A whole training job with gpu-decode's path (worker bytes, decode and augment on the device),
run on the CPU device: the job's own code, from the loader to the artifact. gpu-decode=true
refuses a CPU job, so the test switches the path on where the job resolves the hyperparameter;
the CUDA run is tests/integration/test_gpu.py."""

from __future__ import annotations

import json
import logging

import pytest

from container_train import main as job
from container_train.config import JobConfig
from tests.conftest import TINY_VALUES

pytestmark = pytest.mark.slow


def test_a_job_learns_with_images_decoded_on_the_device(color_data, tmp_path, monkeypatch,
                                                         caplog):
    monkeypatch.setattr(job, "resolve_gpu_decode", lambda requested, device: True)
    config = JobConfig.from_values(
        {**TINY_VALUES, "epochs": 4, "trainable-layers": "all", "image-size": 64},
        data_dir=color_data, model_dir=tmp_path / "model", output_data_dir=tmp_path / "out")
    with caplog.at_level(logging.INFO, logger="container_train"):
        job.run(config)
    assert "training images decoded and augmented on cpu" in caplog.text
    history = json.loads((tmp_path / "out" / "metrics.json").read_text())["history"]
    losses = [h["train_loss"] for h in history]
    assert losses[-1] < 0.25 * losses[0], losses  # the CPU path's bar (test_training_run.py)
    assert history[-1]["train_accuracy"] >= 0.9
    assert (tmp_path / "model" / "model.pt").is_file()
