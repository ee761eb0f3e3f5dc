"""The end of training fits calibration and the novelty detector on the valid split: the
manifest fields serving reads, and the report's reliability diagram."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from container_train.config import JobConfig
from container_train.main import run
from model_artifact.manifest import Manifest, Novelty
from model_artifact.network import load_artifact
from model_artifact.novelty import novelty_scores
from model_artifact.preprocess import load_image
from tests.conftest import SAMPLE_DATA, TINY_VALUES

pytestmark = pytest.mark.slow
VALID_IMAGES = sorted((SAMPLE_DATA / "valid").glob("*/*.jpg"))


def test_manifest_records_temperature_and_novelty_fitted_on_valid(tiny_run, tiny_artifact):
    manifest = Manifest.read(tiny_artifact)
    calibration, novelty = manifest.calibration, manifest.novelty
    assert calibration is not None and novelty is not None
    assert calibration.valid_images == len(VALID_IMAGES) == novelty.valid_images
    assert 0.25 <= calibration.temperature <= 100.0
    assert 0.0 <= calibration.ece_after <= calibration.ece_before + 1e-9 <= 1.0 + 1e-9
    assert (novelty.method, novelty.target_false_abstain) == ("energy", 0.05)
    assert novelty.temperature == calibration.temperature and math.isfinite(novelty.threshold)
    # The contract: on the valid images, the served network's scores exceed the threshold for
    # at most abstain-rate of them (the recorded rate).
    model, _ = load_artifact(tiny_artifact)
    transform = manifest.preprocessing.transform()
    batch = torch.stack([transform(load_image(p)) for p in VALID_IMAGES])
    with torch.inference_mode():
        scores = novelty_scores(model(batch), novelty)
    abstaining = float((scores > novelty.threshold).double().mean())
    assert abstaining <= 0.05 and abstaining == pytest.approx(novelty.valid_false_abstain)


def test_report_shows_the_reliability_diagram_and_both_eces(tiny_run, tiny_artifact):
    out = tiny_run.output_data_dir
    fitted = json.loads((out / "calibration.json").read_text())
    calibration = Manifest.read(tiny_artifact).calibration
    assert fitted["temperature"] == calibration.temperature
    assert sum(b["count"] for b in fitted["bins_before"]) == len(VALID_IMAGES)
    assert (out / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    page = (out / "report.html").read_text()
    assert "expected calibration error, T = 1" in page and "reliability diagram" in page
    assert f"{calibration.ece_after:.4f}" in page


def _trained_with(score: str, data: Path, tmp_path: Path) -> Novelty:
    """A one-epoch job with abstain-rate 0.25 and abstain-score ``score``: its novelty field."""
    config = JobConfig.from_values(
        {**TINY_VALUES, "image-size": 32, "epochs": 1, "abstain-rate": 0.25,
         "abstain-score": score}, data_dir=data, model_dir=tmp_path / "model",
        output_data_dir=tmp_path / "out", checkpoint_dir=None)
    run(config)
    return Manifest.read(tmp_path / "model").novelty


def test_abstain_hyperparameters_reach_the_manifest(color_data, tmp_path):
    novelty = _trained_with("mahalanobis", color_data, tmp_path)
    assert novelty.method == "mahalanobis" and novelty.target_false_abstain == 0.25
    assert len(novelty.means) == 2 and len(novelty.precision) == 2
    assert novelty.valid_false_abstain <= 0.25


def test_abstain_score_features_writes_a_served_novelty_file(color_data, tmp_path):
    """abstain-score=features: the job fits class Gaussians on the pooled features, writes
    novelty.pt hashed in the manifest, and serving scores with it (the threshold the job chose
    leaves at most abstain-rate of the valid images abstaining)."""
    from container_serve.inference import load_served, predict_fn
    from container_serve.settings import ServeSettings
    from model_artifact.files import file_sha256

    novelty = _trained_with("features", color_data, tmp_path)
    assert (novelty.method, novelty.file) == ("features", "novelty.pt")
    assert novelty.sha256 == file_sha256(tmp_path / "model" / "novelty.pt")
    assert novelty.fit_images > 0 and novelty.valid_false_abstain <= 0.25
    report = json.loads((tmp_path / "out" / "calibration.json").read_text())
    assert report["novelty"]["method"] == "features"
    served = load_served(str(tmp_path / "model"), ServeSettings(graph="frozen"))
    valid = sorted((color_data / "valid").glob("*/*"))
    scores = predict_fn([p.read_bytes() for p in valid], served).novelty_scores
    # The threshold is one valid image's own score (novelty.threshold_for_false_abstain), and
    # the served frozen graph rounds differently from training's pass (BatchNorm folded; the
    # whitening magnifies it): that boundary image may land on either side, so one image of
    # slack. A wrong score (energy's scale, unwhitened) moves far more than one image.
    abstaining = int((scores > novelty.threshold).sum())
    recorded = round(novelty.valid_false_abstain * len(valid))
    assert abs(abstaining - recorded) <= 1, (abstaining, recorded)
