"""weights=auto: ImageNet when the image holds the weights, random init otherwise; the value
the job records is what auto became, never 'auto'."""

from __future__ import annotations

import pytest

from container_train import model
from container_train.errors import TrainingError
from job_contract.hyperparameters import Hyperparameters


@pytest.mark.parametrize(("baked", "expected"), [(True, "imagenet"), (False, "none")])
def test_auto_follows_what_the_image_holds(monkeypatch, tmp_path, caplog, baked, expected):
    weights = tmp_path / "resnet50-11ad3fa6.pth"
    monkeypatch.setattr(model, "imagenet_weights_path", lambda: weights if baked else None)
    assert model.resolve_auto_weights("auto") == expected
    if not baked:
        assert "training from random init" in caplog.text
        assert model.initial_weights_path("auto", None) is None


def test_explicit_values_are_kept(monkeypatch):
    monkeypatch.setattr(model, "imagenet_weights_path", lambda: None)
    assert model.resolve_auto_weights("none") == "none"
    with pytest.raises(TrainingError, match="weights=imagenet but"):  # no silent fallback
        model.initial_weights_path("imagenet", None)
    with pytest.raises(TrainingError, match="valid values: auto, imagenet, none"):
        model.initial_weights_path("mine.pth", None)


def test_auto_is_a_valid_hyperparameter_and_imagenet_stays_the_default():
    assert Hyperparameters.from_mapping({"weights": "auto"}).weights == "auto"
    assert Hyperparameters.from_mapping({}).weights == "imagenet"
