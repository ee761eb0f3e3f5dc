"""Serving's calibration and abstain fields (docs/serving-api.md), without a server."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from container_serve import inference
from container_serve.errors import BadRequest
from container_serve.settings import ServeSettings, ServeSettingsError
from model_artifact.calibration import serving_temperature
from model_artifact.manifest import Calibration, Manifest, Novelty
from model_artifact.preprocess import EvalPreprocessing
from tests.unit.test_serve_inference import CLASSES, JPEG, PNG, SETTINGS, ColourNet

TEMPERATURE = 2.5
# Energy score of the stand-in's logits lies in about [-4, -1]: a threshold in the middle
# flags some images and not others; the planted ones below decide which.
NOVELTY = Novelty("energy", -2.0, 0.05, 0.05, 10, 1.0)


def served(calibration: Calibration | None = None, novelty: Novelty | None = None,
           settings: ServeSettings = SETTINGS) -> inference.ServedModel:
    pre = EvalPreprocessing.for_image_size(32)
    manifest = Manifest("resnet50", CLASSES, pre, calibration=calibration, novelty=novelty)
    return inference.ServedModel(ColourNet().eval(), manifest, pre.transform(), settings,
                                 temperature=serving_temperature(calibration,
                                                                 settings.calibration))


def logits_of(body: bytes) -> torch.Tensor:
    model = served()
    tensor = model.transform(inference.decode(inference.open_image(body)))
    with torch.inference_mode():
        return ColourNet().eval()(tensor.unsqueeze(0))[0]


def test_served_probabilities_are_softmax_of_logits_over_the_temperature() -> None:
    logits = logits_of(JPEG)
    plain = inference.predict_fn([JPEG], served()).probabilities[0]
    fitted = inference.predict_fn([JPEG], served(Calibration(TEMPERATURE))).probabilities[0]
    assert torch.allclose(plain, torch.softmax(logits, 0), atol=1e-6)
    assert torch.allclose(fitted, torch.softmax(logits / TEMPERATURE, 0), atol=1e-6)
    assert plain.argmax() == fitted.argmax() and fitted.max() < plain.max()


def test_calibration_can_be_turned_off() -> None:
    off = ServeSettings.from_env({"SERVE_CALIBRATION": "false"})
    assert not off.calibration and ServeSettings.from_env({}).calibration
    assert ServeSettings.from_env(off.worker_env()).calibration is False
    model = served(Calibration(TEMPERATURE), settings=replace(SETTINGS, calibration=False))
    plain = inference.predict_fn([JPEG], served()).probabilities
    assert torch.equal(inference.predict_fn([JPEG], model).probabilities, plain)
    with pytest.raises(ServeSettingsError, match="SERVE_CALIBRATION='maybe'"):
        ServeSettings.from_env({"SERVE_CALIBRATION": "maybe"})


def test_abstain_fields_follow_the_threshold_and_the_attribute() -> None:
    prediction = inference.predict_fn([JPEG, PNG], served(novelty=NOVELTY))
    doc = json.loads(inference.output_fn(prediction, None, 2))
    for image, body in zip(doc["predictions"], (JPEG, PNG), strict=True):
        score = float(-torch.logsumexp(logits_of(body).double(), 0))
        assert image["novelty_score"] == pytest.approx(score, rel=1e-6)
        assert image["abstain"] is (score > NOVELTY.threshold)
        assert image["novelty_threshold"] == NOVELTY.threshold
    everything = replace(NOVELTY, threshold=-100.0)  # every image is "far": all abstain
    flagged = inference.predict_fn([JPEG], served(novelty=everything))
    assert json.loads(inference.output_fn(flagged, None, 2))["predictions"][0]["abstain"]
    without = json.loads(inference.output_fn(prediction, None, 2, abstain=False))
    plain = json.loads(inference.output_fn(inference.predict_fn([JPEG, PNG], served()), None, 2))
    assert without == plain and set(without["predictions"][0]) == {"top_k"}


def test_old_artifacts_answer_without_abstain_fields() -> None:
    doc = json.loads(inference.output_fn(inference.predict_fn([JPEG], served()), None, 2))
    assert set(doc["predictions"][0]) == {"top_k"}


@pytest.mark.parametrize(("attributes", "expected"), [
    (None, True), ("", True), ("top_k=3", True), ("abstain=false", False),
    ("top_k=2; Abstain = FALSE", False), ("abstain=true", True)])
def test_parse_abstain(attributes: str | None, expected: bool) -> None:
    assert inference.parse_abstain(attributes) is expected


def test_parse_abstain_refuses_other_values() -> None:
    with pytest.raises(BadRequest, match="abstain must be true or false"):
        inference.parse_abstain("abstain=no")
