"""The SageMaker job layout (/opt/ml, moved by SAGEMAKER_BASE_DIR) has one definition that the
training code follows and the drivers name to SageMaker."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from container_train import config, debugger
from job_contract import sagemaker_paths
from job_contract.sagemaker_paths import CHECKPOINT_LOCAL_PATH, TENSORBOARD_LOCAL_PATH

REPO = Path(__file__).resolve().parents[2]
PRODUCT = ("container_train", "container_serve", "drivers", "model_artifact", "job_contract",
           "scripts", "bench")


@pytest.fixture
def job_env(tmp_path, monkeypatch) -> Path:
    """A run laid out as a SageMaker job under tmp_path/opt_ml (SM_MODEL_DIR marks a job)."""
    base = tmp_path / "opt_ml"
    (base / "output").mkdir(parents=True)
    for name in [v for v in os.environ if v.startswith(("SM_", "SAGEMAKER_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(base))
    monkeypatch.setenv("SM_MODEL_DIR", str(tmp_path / "model"))
    monkeypatch.setenv("SM_OUTPUT_DATA_DIR", str(tmp_path / "data"))
    return base


def test_base_dir_is_opt_ml_unless_sagemaker_base_dir_moves_it(tmp_path):
    assert sagemaker_paths.base_dir({}) == Path("/opt/ml")
    assert sagemaker_paths.base_dir({"SAGEMAKER_BASE_DIR": str(tmp_path)}) == tmp_path


def test_training_defaults_follow_sagemaker_base_dir(job_env, sample_data):
    job = config.parse_config(["--data-dir", str(sample_data)])
    assert job.checkpoint_dir == job_env / "checkpoints"
    assert job.tensorboard_dir == job_env / "output" / "tensorboard"
    assert config.failure_file_path() == job_env / "output" / "failure"
    hook = job_env / "input" / "config" / "debughookconfig.json"
    hook.parent.mkdir(parents=True)
    hook.write_text(json.dumps({"LocalPath": "/opt/ml/output/tensors"}))
    assert debugger.config_path() == hook


def test_drivers_send_the_paths_of_the_job_container(job_env):
    """CheckpointConfig / TensorBoardOutputConfig LocalPath: where the job sees them, whatever
    SAGEMAKER_BASE_DIR is on the laptop."""
    assert (CHECKPOINT_LOCAL_PATH, TENSORBOARD_LOCAL_PATH) == (
        "/opt/ml/checkpoints", "/opt/ml/output/tensorboard")


def test_only_the_paths_module_reads_sagemaker_base_dir():
    readers = [str(path.relative_to(REPO)) for package in PRODUCT
               for path in (REPO / package).rglob("*.py")
               if "SAGEMAKER_BASE_DIR" in path.read_text()]
    assert readers == ["job_contract/sagemaker_paths.py"]
