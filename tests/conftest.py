"""Shared fixtures: the bundled sample data, a synthetic learnable data set, and one real tiny
training run (subprocess, as a job would run) whose artifact and log other tests reuse."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE_DATA = REPO / "sample_data" / "photos5"
# compile false: AOTInductor takes 20-40 s per run; tests/integration/test_compiled.py covers it.
TINY_VALUES = {"weights": "none", "image-size": 64, "num-workers": 0, "compile": False,
               "batch-size": 16, "log-interval": 2}  # for JobConfig.from_values (in-process runs)
TINY_ARGS = [arg for name, value in TINY_VALUES.items() for arg in (f"--{name}", str(value))]


def training_env() -> dict[str, str]:
    """The environment of a direct run: repo importable, no SageMaker variables leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


@dataclass(frozen=True)
class TrainingRun:
    model_dir: Path
    output_data_dir: Path
    checkpoint_dir: Path
    log: str
    returncode: int


def run_training_subprocess(root: Path, data_dir: Path, *extra: str) -> TrainingRun:
    model_dir, out_dir, ckpt = root / "model", root / "output" / "data", root / "checkpoints"
    cmd = [sys.executable, "-m", "container_train", "--data-dir", str(data_dir),
           "--model-dir", str(model_dir), "--output-data-dir", str(out_dir),
           "--checkpoint-dir", str(ckpt), *TINY_ARGS, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=training_env(), timeout=600)
    return TrainingRun(model_dir, out_dir, ckpt, proc.stdout + proc.stderr, proc.returncode)


# The sample photos no training run learns from (test + valid): 49 images for agreement checks.
HELD_OUT = sorted((SAMPLE_DATA / "test").glob("*/*.jpg")) + sorted(
    (SAMPLE_DATA / "valid").glob("*/*.jpg"))


def sample_run(tmp_path_factory: pytest.TempPathFactory, name: str, *extra: str) -> TrainingRun:
    """One real 1-epoch run on the bundled sample data (plus ``extra`` arguments) that must
    succeed: the shared start of the fixtures that test what a training job writes."""
    run = run_training_subprocess(tmp_path_factory.mktemp(name), SAMPLE_DATA, "--epochs", "1",
                                  *extra)
    assert run.returncode == 0, run.log[-3000:]
    return run


@pytest.fixture(scope="session")
def sample_data() -> Path:
    return SAMPLE_DATA


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TrainingRun:
    """One real 1-epoch run of the training code on the bundled sample data (5 classes)."""
    return sample_run(tmp_path_factory, "tiny_run")


@pytest.fixture(scope="session")
def tiny_artifact(tiny_run: TrainingRun) -> Path:
    """A model dir (model.pt + manifest.json) written by the real training code."""
    return tiny_run.model_dir


def make_color_dataset(root: Path, *, per_class: dict[str, int], size: int = 48,
                       classes: tuple[str, ...] = ("blue", "red")) -> Path:
    """Noisy solid-colour images: learnable in a few epochs even by a random-init backbone."""
    import random

    from PIL import Image

    colors = {"red": (200, 40, 40), "blue": (40, 40, 200), "green": (40, 200, 40)}
    rng = random.Random(0)
    for split, count in per_class.items():
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                base = colors[name]
                pixels = bytes(max(0, min(255, c + rng.randint(-40, 40)))
                               for _ in range(size * size) for c in base)
                Image.frombytes("RGB", (size, size), pixels).save(folder / f"{i}.jpg")
    return root


@pytest.fixture(scope="session")
def color_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_color_dataset(tmp_path_factory.mktemp("colors"),
                              per_class={"train": 16, "valid": 6, "test": 6})
