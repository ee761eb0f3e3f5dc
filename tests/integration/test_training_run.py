"""Real (tiny) training runs: metrics, artifact, learning, resume, failures, the toolkit."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from container_train import data
from container_train.config import JobConfig
from container_train.engine import Callback
from container_train.main import finish, fit, main, run, setup
from job_contract.metrics import METRIC_KEYS, parse_log
from model_artifact.network import load_artifact
from tests.conftest import REPO, SAMPLE_DATA, TINY_VALUES, training_env

pytestmark = pytest.mark.slow
CLASSES = sorted(p.name for p in (SAMPLE_DATA / "train").iterdir())


def test_metric_regexes_read_every_metric_from_a_real_log(tiny_run):
    parsed = parse_log(tiny_run.log)
    assert set(parsed) == set(METRIC_KEYS.values())
    final = json.loads((tiny_run.output_data_dir / "metrics.json").read_text())["final"]
    # The last valid:* value SageMaker sees is the one of the kept (best) weights.
    assert parsed["valid:loss"][-1] == pytest.approx(final["valid_loss"], abs=1e-6)
    assert parsed["test:accuracy"] == [pytest.approx(final["test_accuracy"], abs=1e-6)]
    assert "[train] epoch 1/1 step 2/6" in tiny_run.log and "img/s eta" in tiny_run.log


def test_artifact_and_reports(tiny_run, tiny_artifact):
    model, manifest = load_artifact(tiny_artifact)
    assert list(manifest.class_names) == CLASSES
    assert model.fc.out_features == len(CLASSES)
    pre = manifest.preprocessing
    assert (pre.resize, pre.crop_size) == (73, 64)
    assert manifest.hyperparameters["image-size"] == 64
    assert set(manifest.versions) == {"python", "torch", "torchvision"}
    out = tiny_run.output_data_dir
    for name in ("metrics.json", "per_class_accuracy.json", "confusion_matrix.json",
                 "confusion_matrix.png", "curves.png"):
        assert (out / name).stat().st_size > 0, name
    matrix = json.loads((out / "confusion_matrix.json").read_text())
    test_images = sum(1 for _ in (SAMPLE_DATA / "test").rglob("*.jpg"))
    assert matrix["split"] == "test" and sum(map(sum, matrix["matrix"])) == test_images
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_the_log_gives_the_manifest_hash_a_deployer_pins(tiny_run, tiny_artifact):
    """deploy.py --manifest-sha256 takes the value from the job's log (outside the archive)."""
    written = hashlib.sha256((tiny_artifact / "manifest.json").read_bytes()).hexdigest()
    assert re.findall(r"manifest_sha256=([0-9a-f]{64})", tiny_run.log) == [written]


def _config(data: Path, root: Path, values: dict[str, Any]) -> JobConfig:
    return JobConfig.from_values({**TINY_VALUES, "image-size": 32, **values}, data_dir=data,
                                 model_dir=root / "model", output_data_dir=root / "out",
                                 checkpoint_dir=root / "ckpt")


def test_loss_falls_on_a_learnable_fixture(color_data, tmp_path):
    # Random init (no ImageNet weights here) needs BatchNorm in train mode to learn fast.
    run(_config(color_data, tmp_path, {"epochs": 4, "trainable-layers": "all", "image-size": 64}))
    history = json.loads((tmp_path / "out" / "metrics.json").read_text())["history"]
    losses = [h["train_loss"] for h in history]
    assert losses[-1] < 0.25 * losses[0], losses
    assert history[-1]["train_accuracy"] >= 0.9


class CrashAfterEpoch(Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, epoch, metrics):
        if epoch == self.epoch:
            raise KeyboardInterrupt("simulated kill after the checkpoint was written")


def test_resume_finishes_remaining_epochs_with_identical_weights(color_data, tmp_path, caplog):
    values = {"epochs": 3, "lr": 0.01, "trainable-layers": "1"}
    run(_config(color_data, tmp_path / "straight", values))

    interrupted = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        run(_config(color_data, interrupted, values), callbacks=[CrashAfterEpoch(1)])
    assert not (interrupted / "model" / "model.pt").exists()
    epochs_seen = []

    class Recorder(Callback):
        def on_epoch_end(self, epoch, metrics):
            epochs_seen.append(epoch)

    with caplog.at_level("INFO"):
        run(_config(color_data, interrupted, values), callbacks=[Recorder()])
    assert epochs_seen == [2, 3]
    assert "resuming from" in caplog.text and "after epoch 1" in caplog.text
    a = torch.load(tmp_path / "straight" / "model" / "model.pt", weights_only=True)
    b = torch.load(interrupted / "model" / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    history = json.loads((interrupted / "out" / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]


def test_changed_hyperparameters_do_not_resume(color_data, tmp_path, caplog):
    run(_config(color_data, tmp_path, {"epochs": 1}))
    with caplog.at_level("WARNING"):
        run(_config(color_data, tmp_path, {"epochs": 1, "lr": 0.5}))
    assert "ignoring checkpoint" in caplog.text and "['lr']" in caplog.text


def test_step_summary_records_the_workers_the_loaders_used(color_data, tmp_path, monkeypatch):
    """num-workers is resolved once: step_summary.json records what the DataLoaders ran with
    (tests/unit/test_num_workers.py covers a GPU host, where auto is not 0)."""
    used = []

    class Recording(torch.utils.data.DataLoader):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            used.append(self.num_workers)

    monkeypatch.setattr(data, "DataLoader", Recording)
    assert main(["--data-dir", str(color_data), "--model-dir", str(tmp_path / "model"),
                 "--output-data-dir", str(tmp_path / "out"), "--weights", "none",
                 "--image-size", "32", "--epochs", "1", "--trainable-layers", "1",
                 "--compile", "false", "--num-workers", "auto"]) == 0
    summary = json.loads((tmp_path / "out" / "step_summary.json").read_text())
    assert used and set(used) == {summary["num_workers"]}


def test_the_caller_of_fit_decides_about_export(color_data, tmp_path):
    """Local tuning's path: fit returns the trained job; finish without export writes the
    reports (once, figures optional) and no model."""
    trained = fit(setup(_config(color_data, tmp_path, {"epochs": 2})))
    assert trained.state.epoch == 2 and trained.final["best_epoch"] in (1, 2)
    finish(trained, figures=False, export=False)
    assert not (tmp_path / "model" / "model.pt").exists()
    assert not (tmp_path / "out" / "curves.png").exists()
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["final"] == pytest.approx(trained.final)
    finish(trained)
    assert load_artifact(tmp_path / "model")[1].metrics == pytest.approx(trained.final)
    assert (tmp_path / "out" / "curves.png").stat().st_size > 0


@pytest.mark.parametrize(("args", "reason"), [
    (["--lr", "fast"],
     "hyperparameter 'lr' has invalid value 'fast': expected a number (valid: [1e-07, 10])"),
    (["--optimiser", "sgd"], "unknown hyperparameter or argument 'optimiser'; valid "
                             "hyperparameters: lr, batch-size, epochs, optimizer,"),
])
def test_failure_file_starts_with_the_reason(tmp_path, monkeypatch, args, reason):
    monkeypatch.setenv("SM_OUTPUT_DIR", str(tmp_path / "output"))
    code = main(["--data-dir", str(SAMPLE_DATA), "--model-dir", str(tmp_path / "m"),
                 "--output-data-dir", str(tmp_path / "o"), *args])
    assert code == 1
    text = (tmp_path / "output" / "failure").read_text()
    assert text.splitlines()[0].startswith(reason)
    assert "Traceback" in text  # details follow the reason


def _opt_ml(base: Path, hyperparameters: dict, channels: dict[str, Path]) -> dict[str, str]:
    """A /opt/ml tree as SageMaker lays it out, and the environment to run `train` on it."""
    config = base / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    (config / "resourceconfig.json").write_text(json.dumps(
        {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"}))
    (config / "inputdataconfig.json").write_text(json.dumps(
        {name: {"TrainingInputMode": "File"} for name in channels}))
    for name, source in channels.items():
        shutil.copytree(source, base / "input" / "data" / name)
    (base / "code").mkdir()
    shutil.copy(REPO / "container_train" / "train.py", base / "code" / "train.py")
    env = training_env()
    env.update(SAGEMAKER_BASE_DIR=str(base), SAGEMAKER_PROGRAM="train.py",
               SM_STUDIO_LOCAL_MODE="true",  # no host-name resolution of algo-1
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]]))
    return env


def test_toolkit_train_with_three_channels_leaves_a_loadable_artifact(tmp_path):
    base = tmp_path / "opt_ml"
    # Values as SageMaker stores them: strings, some JSON-encoded twice by the client.
    hps = {"weights": '"none"', "image-size": "64", "epochs": "1", "num-workers": "0",
           "batch_size": '"16"', "sagemaker_program": '"train.py"'}
    env = _opt_ml(base, hps, {s: SAMPLE_DATA / s for s in ("train", "valid", "test")})
    proc = subprocess.run(["train"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (base / "output" / "success").exists()
    model, manifest = load_artifact(base / "model")
    assert list(manifest.class_names) == CLASSES and model.fc.out_features == len(CLASSES)
    assert manifest.hyperparameters["batch-size"] == 16
    assert (base / "checkpoints" / "checkpoint-latest.pt").exists()
    assert (base / "output" / "data" / "metrics.json").exists()


def test_toolkit_keeps_our_failure_reason(tmp_path):
    base = tmp_path / "opt_ml"
    train_only = tmp_path / "data"
    shutil.copytree(SAMPLE_DATA / "train", train_only / "train")
    env = _opt_ml(base, {"weights": "none"}, {"training": train_only})
    proc = subprocess.run(["train"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    first = (base / "output" / "failure").read_text().splitlines()[0]
    assert first.startswith("missing 'valid' split in channel 'training'")
