"""The end of training's trust fit: temperature scaling and the "none of my classes" detector,
both fitted on the valid split's logits of the kept weights (docs/artifact.md)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from model_artifact.calibration import (
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    ReliabilityBin,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)
from model_artifact.manifest import Calibration, Novelty
from model_artifact.novelty import MAHALANOBIS_MAX_CLASSES, fit_novelty

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
