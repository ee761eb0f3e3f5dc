"""The end of training's trust fit: temperature scaling and the "none of my classes" detector,
both fitted on the valid split's logits of the kept weights (docs/artifact.md); with
abstain-score=features the detector is fitted on the pooled features instead
(fit_feature_trust: class Gaussians on a capped train sample, threshold on valid)."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from model_artifact.calibration import (
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    ReliabilityBin,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)
from model_artifact.manifest import Calibration, Novelty
from model_artifact.network import WithFeatures
from model_artifact.novelty import (
    MAHALANOBIS_MAX_CLASSES,
    FeatureGaussian,
    fit_feature_novelty,
    fit_novelty,
)
from model_artifact.preprocess import EvalPreprocessing, image_batches

# The features fit's cost is one forward pass over these images (train) plus the valid split.
# A shared 2048 x 2048 covariance wants several times 2048 images (800 left most directions to
# the shrinkage); 10,000 in all (~5x) keeps the pass and the ~4e10-flop covariance product
# bounded, and 1,000 per class keeps a large class from crowding out the others.
FEATURE_FIT_PER_CLASS = 1_000
FEATURE_FIT_IMAGES = 10_000

log = logging.getLogger(__name__)


@dataclass
class TrustFit:
    """What the manifest stores (None: no valid image to fit on) and what the report shows."""

    calibration: Calibration | None = None
    novelty: Novelty | None = None
    bins_before: list[ReliabilityBin] = field(default_factory=list)
    bins_after: list[ReliabilityBin] = field(default_factory=list)

    def report(self) -> dict[str, Any] | None:
        """calibration.json's content (None: nothing was fitted)."""
        if self.calibration is None:
            return None
        return {"split": "valid", **self.calibration.to_dict(),
                "bins_before": [asdict(b) for b in self.bins_before],
                "bins_after": [asdict(b) for b in self.bins_after],
                **({"novelty": {k: v for k, v in self.novelty.to_dict().items()
                                if k not in ("means", "precision")}} if self.novelty else {})}


def _method(requested: str, num_classes: int) -> str:
    if requested == "features":  # fitted after this on the features (fit_feature_trust);
        return "energy"  # energy stays the detector if that fit cannot run
    if requested == "mahalanobis" and num_classes > MAHALANOBIS_MAX_CLASSES:
        log.warning("abstain-score=mahalanobis stores classes^2 numbers in the manifest: %d "
                    "classes is over %d, so the energy score is used", num_classes,
                    MAHALANOBIS_MAX_CLASSES)
        return "energy"
    return requested


def fit_trust(logits: torch.Tensor, labels: torch.Tensor, *, rate: float,
              method: str) -> TrustFit:
    """Temperature, ECE before and after, reliability bins, and the novelty threshold for
    ``rate`` false abstentions on these (valid) images."""
    if logits.shape[0] == 0:
        log.warning("no valid image: the artifact has no calibration and no novelty detector")
        return TrustFit()
    temperature = fit_temperature(logits, labels)
    if not MIN_TEMPERATURE * 1.01 < temperature < MAX_TEMPERATURE / 1.01:
        log.warning("calibration: the temperature %.3f is at the end of its range [%g, %g]: the "
                    "valid split is too small or the model too far from calibrated for a "
                    "reliable fit", temperature, MIN_TEMPERATURE, MAX_TEMPERATURE)
    before = torch.softmax(logits.double(), dim=1)
    after = torch.softmax(logits.double() / temperature, dim=1)
    calibration = Calibration(temperature, expected_calibration_error(before, labels),
                              expected_calibration_error(after, labels), int(logits.shape[0]))
    novelty = fit_novelty(logits, labels, rate=rate, temperature=temperature,
                          method=_method(method, logits.shape[1]))
    log.info("calibration on %d valid images: temperature %.3f, ECE %.4f -> %.4f; novelty %s, "
             "threshold %.4f (%.1f%% of valid images abstain)", calibration.valid_images,
             temperature, calibration.ece_before, calibration.ece_after, novelty.method,
             novelty.threshold, 100 * novelty.valid_false_abstain)
    return TrustFit(calibration, novelty, reliability_bins(before, labels),
                    reliability_bins(after, labels))


Samples = Sequence[tuple[str | os.PathLike[str], int]]


def capped_sample(samples: Samples, seed: int, per_class: int = FEATURE_FIT_PER_CLASS,
                  total: int = FEATURE_FIT_IMAGES) -> list[tuple[str | os.PathLike[str], int]]:
    """A seeded sample of at most ``per_class`` images per class and ``total`` in all."""
    shuffled = list(samples)
    random.Random(seed).shuffle(shuffled)
    taken: dict[int, int] = {}
    chosen = []
    for path, label in shuffled:
        if len(chosen) < total and taken.get(label, 0) < per_class:
            taken[label] = taken.get(label, 0) + 1
            chosen.append((path, label))
    return sorted(chosen, key=lambda item: str(item[0]))


def pooled_features(net: nn.Module, paths: Sequence[str | os.PathLike[str]],
                    pre: EvalPreprocessing, device: torch.device) -> torch.Tensor:
    """(N, D) pooled features of ``paths`` under evaluation preprocessing, on ``device``."""
    model = WithFeatures(net).eval()
    rows = [torch.zeros(0, net.fc.in_features)]
    with torch.inference_mode():
        for batch in image_batches(paths, pre, batch_size=64):
            rows.append(model(batch.to(device))[1].float().cpu())
    return torch.cat(rows)


def fit_feature_trust(net: nn.Module, train: Samples, valid: Samples, *,
                      pre: EvalPreprocessing, device: torch.device, rate: float,
                      temperature: float, seed: int) -> tuple[Novelty, FeatureGaussian] | None:
    """abstain-score=features: class Gaussians on a capped train sample's pooled features,
    threshold on the valid split's (capped alike); None (logged) without images to fit on."""
    fit = capped_sample(train, seed)
    held = capped_sample(valid, seed, per_class=FEATURE_FIT_IMAGES)
    if not fit or not held:
        log.warning("abstain-score=features needs train and valid images: the energy score "
                    "stays the detector")
        return None
    train_features = pooled_features(net, [p for p, _ in fit], pre, device)
    labels = torch.tensor([label for _, label in fit], dtype=torch.long)
    novelty, gaussian = fit_feature_novelty(
        train_features, labels, pooled_features(net, [p for p, _ in held], pre, device),
        num_classes=net.fc.out_features, rate=rate, temperature=temperature)
    log.info("novelty features: class Gaussians on %d train images' %d-d pooled features, "
             "threshold %.4f (%.1f%% of %d valid images abstain)", len(fit),
             gaussian.whitening.shape[0], novelty.threshold, 100 * novelty.valid_false_abstain,
             len(held))
    return novelty, gaussian
