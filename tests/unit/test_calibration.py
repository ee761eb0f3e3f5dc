"""Temperature scaling and the calibration error: the maths serving and the report rely on."""

from __future__ import annotations

import math

import pytest
import torch

from model_artifact.calibration import (
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)


def planted(n: int = 4000, classes: int = 5, true_t: float = 3.0, seed: int = 0):
    """Labels drawn from softmax(base), served logits = base * true_t: overconfident by
    construction, so the calibrating temperature is true_t."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, classes, generator=g) * 2.0
    labels = torch.multinomial(torch.softmax(base, 1), 1, generator=g).squeeze(1)
    return base * true_t, labels


def test_planted_overconfidence_is_recovered_and_ece_drops() -> None:
    logits, labels = planted()
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(3.0, rel=0.1)
    before = expected_calibration_error(torch.softmax(logits, 1), labels)
    after = expected_calibration_error(torch.softmax(logits / t, 1), labels)
    assert before > 0.1
    assert after < before / 3


def test_temperature_keeps_the_ranking() -> None:
    logits, labels = planted(200)
    t = fit_temperature(logits, labels)
    assert torch.equal((logits / t).argsort(1), logits.argsort(1))


@pytest.mark.parametrize("n", [0, 1, 2])
def test_tiny_valid_sets_give_a_bounded_finite_temperature(n: int) -> None:
    logits, labels = planted(n)
    t = fit_temperature(logits, labels)
    assert math.isfinite(t) and MIN_TEMPERATURE <= t <= MAX_TEMPERATURE
    if n == 0:
        assert t == 1.0


def test_separable_set_stays_in_the_bracket() -> None:
    # All correct and confident: the NLL keeps falling as T -> 0; the bracket stops it.
    logits = torch.eye(3) * 5
    t = fit_temperature(logits, torch.arange(3))
    assert t == pytest.approx(MIN_TEMPERATURE, rel=0.01)


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="labels"):
        fit_temperature(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))


def test_ece_of_a_known_table() -> None:
    # Two images at confidence 0.9 (one right), two at 0.6 (both right), 4 bins of 0.25:
    # |0.5 - 0.9| * 2/4 + |1.0 - 0.6| * 2/4 = 0.4
    p = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = torch.tensor([0, 1, 0, 1])
    assert expected_calibration_error(p, labels, bins=4) == pytest.approx(0.4)
    table = reliability_bins(p, labels, bins=4)
    assert [b.count for b in table] == [0, 0, 2, 2]
    assert table[3].accuracy == pytest.approx(0.5)
    assert table[3].confidence == pytest.approx(0.9)
    assert expected_calibration_error(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)) == 0


def test_calibration_round_trips_and_is_optional() -> None:
    import json

    from model_artifact.manifest import ArtifactError, Calibration, Manifest
    from model_artifact.preprocess import EvalPreprocessing

    plain = Manifest("resnet50", ("a", "b"), EvalPreprocessing.for_image_size(32))
    assert "calibration" not in plain.to_dict() and plain.calibration is None
    fitted = plain.with_trust(Calibration(1.7, 0.2, 0.03, 40), None)
    back = Manifest.from_dict(json.loads(json.dumps(fitted.to_dict())))
    assert back.calibration == Calibration(1.7, 0.2, 0.03, 40)
    with pytest.raises(ArtifactError, match="temperature"):
        Manifest.from_dict({**plain.to_dict(), "calibration": {"temperature": 0}})
