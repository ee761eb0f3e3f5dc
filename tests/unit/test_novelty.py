"""The "none of my classes" score, its threshold and AUROC, and their manifest field."""

from __future__ import annotations

import json

import pytest
import torch

from model_artifact.manifest import ArtifactError, Manifest, Novelty
from model_artifact.novelty import (
    MAHALANOBIS_MAX_CLASSES,
    auroc,
    energy_score,
    fit_novelty,
    novelty_scores,
    threshold_for_false_abstain,
)
from model_artifact.preprocess import EvalPreprocessing


def test_threshold_gives_the_asked_false_abstain_rate() -> None:
    scores = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    for rate in (0.0, 0.01, 0.05, 0.2):
        t = threshold_for_false_abstain(scores, rate)
        assert float((scores > t).double().mean()) == pytest.approx(rate, abs=1e-9)


def test_threshold_with_ties_never_exceeds_the_rate() -> None:
    scores = torch.tensor([1.0] * 10 + [2.0] * 10)
    t = threshold_for_false_abstain(scores, 0.25)
    assert float((scores > t).double().mean()) <= 0.25


def test_threshold_refuses_bad_input() -> None:
    with pytest.raises(ValueError):
        threshold_for_false_abstain(torch.zeros(0), 0.05)
    with pytest.raises(ValueError):
        threshold_for_false_abstain(torch.zeros(3), 1.0)


def test_auroc_separable_identical_and_reversed() -> None:
    known, unknown = torch.arange(10.0), torch.arange(10.0) + 100
    assert auroc(known, unknown) == 1.0
    assert auroc(unknown, known) == 0.0
    assert auroc(known, known) == pytest.approx(0.5)
    assert auroc(torch.tensor([0.0, 2.0]), torch.tensor([1.0])) == pytest.approx(0.5)


def clustered(n: int, classes: int, seed: int, spread: float = 8.0):
    """Confident logits: each image's own class logit is high."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    logits = torch.randn(n, classes, generator=g) + spread * torch.eye(classes)[labels]
    return logits, labels


@pytest.mark.parametrize("method", ["energy", "mahalanobis"])
def test_both_scores_separate_confident_from_flat_logits(method: str) -> None:
    logits, labels = clustered(500, 4, seed=2)
    stats = fit_novelty(logits, labels, rate=0.05, method=method)
    assert stats.valid_false_abstain == pytest.approx(0.05, abs=0.002)
    flat = torch.randn(200, 4, generator=torch.Generator().manual_seed(3))  # no class stands out
    known, _ = clustered(500, 4, seed=4)
    assert auroc(novelty_scores(known, stats), novelty_scores(flat, stats)) > 0.95


def test_energy_is_higher_for_flatter_logits() -> None:
    scores = energy_score(torch.tensor([[10.0, 0.0], [1.0, 1.0]]))
    assert scores[1] > scores[0]


def test_mahalanobis_is_capped_by_manifest_size() -> None:
    logits = torch.randn(10, MAHALANOBIS_MAX_CLASSES + 1)
    with pytest.raises(ValueError, match="at most"):
        fit_novelty(logits, torch.zeros(10, dtype=torch.long), rate=0.05, method="mahalanobis")


@pytest.mark.parametrize("method", ["energy", "mahalanobis"])
def test_novelty_round_trips_through_the_manifest(method: str) -> None:
    logits, labels = clustered(50, 3, seed=5)
    stats = fit_novelty(logits, labels, rate=0.1, temperature=1.5, method=method)
    manifest = Manifest("resnet50", ("a", "b", "c"), EvalPreprocessing.for_image_size(32),
                        novelty=stats)
    back = Manifest.from_dict(json.loads(json.dumps(manifest.to_dict())))
    assert back.novelty == stats
    assert torch.equal(novelty_scores(logits, back.novelty), novelty_scores(logits, stats))


def test_malformed_novelty_is_refused_with_the_field_named() -> None:
    data = Manifest("resnet50", ("a", "b"), EvalPreprocessing.for_image_size(32)).to_dict()
    good = Novelty("mahalanobis", 1.0, 0.05, 0.05, 10, 1.0, ((0.0, 1.0), (1.0, 0.0)),
                   ((1.0, 0.0), (0.0, 1.0))).to_dict()
    assert Manifest.from_dict({**data, "novelty": good}).novelty.method == "mahalanobis"
    with pytest.raises(ArtifactError, match="novelty.means"):
        Manifest.from_dict({**data, "novelty": {**good, "means": [[0.0, 1.0]]}})
    with pytest.raises(ArtifactError, match="method"):
        Manifest.from_dict({**data, "novelty": {**good, "method": "vibes"}})
    assert "novelty" not in data and Manifest.from_dict(data).novelty is None
