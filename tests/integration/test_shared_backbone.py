"""Frozen-backbone training runs on different class sets share one backbone fingerprint, the
backbone (BatchNorm running statistics included) leaves training exactly as it started, and
their artifacts share it when served together."""

from __future__ import annotations

import pytest
import torch

from container_serve import inference
from container_serve.resident_models import ResidentModels
from container_serve.settings import ServeSettings
from container_train.config import JobConfig
from container_train.main import run
from model_artifact.manifest import Manifest
from model_artifact.network import backbone_sha256, build_model
from tests.conftest import HELD_OUT, TINY_VALUES, make_color_dataset

pytestmark = pytest.mark.slow
SEED = 5


def _train(data, root, values):
    run(JobConfig.from_values({**TINY_VALUES, "image-size": 32, "epochs": 2, "seed": SEED,
                               **values},
                              data_dir=data, model_dir=root / "model",
                              output_data_dir=root / "out"))
    return Manifest.read(root / "model")


def test_frozen_backbone_runs_share_the_fingerprint_of_their_starting_backbone(
        color_data, tmp_path, monkeypatch):
    monkeypatch.setenv("SERVE_GRAPH", "frozen")  # model_fn: the graph the shared one uses
    three = make_color_dataset(tmp_path / "three", per_class={"train": 8, "valid": 3, "test": 3},
                               classes=("blue", "green", "red"))
    # trainable-layers=0 is the default; one run takes the feature-cache path, one the full
    # forward (the backbone in eval mode inside a training step).
    cached = _train(color_data, tmp_path / "cached", {})
    full = _train(three, tmp_path / "full", {"feature-cache": False})
    assert cached.num_classes == 2 and full.num_classes == 3
    assert cached.backbone_sha256 == full.backbone_sha256
    assert cached.head_sha256 != full.head_sha256
    torch.manual_seed(SEED)
    start = build_model("resnet50", 2).state_dict()  # what training starts from at this seed
    assert cached.backbone_sha256 == backbone_sha256(start)  # no running statistic moved

    # Served together, the second loads only its head and both answer as served alone.
    resident = ResidentModels(ServeSettings(graph="frozen"))
    photos = [path.read_bytes() for path in HELD_OUT[:4]]
    for name in ("cached", "full"):
        shared = resident.load(name, str(tmp_path / name / "model"))
        alone = inference.model_fn(str(tmp_path / name / "model"))
        difference = (inference.predict_fn(photos, shared).probabilities
                      - inference.predict_fn(photos, alone).probabilities).abs().max()
        assert difference <= 1e-5, name
    assert list(resident.backbone_users().values()) == [2]


def test_a_fine_tuning_run_has_its_own_fingerprint(color_data, tmp_path):
    frozen = _train(color_data, tmp_path / "frozen", {"epochs": 1})
    tuned = _train(color_data, tmp_path / "tuned", {"epochs": 1, "trainable-layers": 1})
    assert frozen.backbone_sha256 != tuned.backbone_sha256
