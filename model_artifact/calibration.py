"""Post-hoc temperature scaling: one number T, fitted on the valid split, that serving divides
the logits by so that the softmax's confidence matches how often the top-1 is right.

Dividing by T keeps every image's ranking (top-1, top-k) unchanged; only the probabilities move.
See docs/artifact.md ("calibration") for what is stored and its limits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from model_artifact.manifest import Calibration

# The search range for T. Low end: a small valid set the model gets all right has an NLL that
# keeps falling as T -> 0, and a tiny T would serve probabilities of 1.0 for every image; 0.25
# allows a clearly underconfident model. High end: a barely trained model (valid loss far above
# ln classes) wants T -> infinity, i.e. near-uniform probabilities; 100 is that in practice.
MIN_TEMPERATURE = 0.25
MAX_TEMPERATURE = 100.0
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_SEARCH_STEPS = 80  # golden-section steps on log T: the bracket shrinks to ~1e-16 of its width


def _nll(logits: torch.Tensor, labels: torch.Tensor, log_t: float) -> float:
    return float(torch.nn.functional.cross_entropy(logits / math.exp(log_t), labels))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T in [MIN_TEMPERATURE, MAX_TEMPERATURE] minimising the NLL of softmax(logits / T).

    A bounded golden-section search on log T (the NLL is unimodal in T for fixed logits): no
    learning rate, no divergence, deterministic, and fine with a handful of images. No image
    gives 1.0 (no change)."""
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits must be (N, C) and labels (N,), got {tuple(logits.shape)} "
                         f"and {tuple(labels.shape)}")
    if logits.shape[0] == 0:
        return 1.0
    z, y = logits.detach().double(), labels.detach().long()
    low, high = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)
    a, b = high - _GOLDEN * (high - low), low + _GOLDEN * (high - low)
    fa, fb = _nll(z, y, a), _nll(z, y, b)
    for _ in range(_SEARCH_STEPS):
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - _GOLDEN * (high - low)
            fa = _nll(z, y, a)
        else:
            low, a, fa = a, b, fb
            b = low + _GOLDEN * (high - low)
            fb = _nll(z, y, b)
    return float(math.exp((low + high) / 2.0))


@dataclass(frozen=True)
class ReliabilityBin:
    lower: float  # the bin holds images whose top-1 confidence is in (lower, upper]
    upper: float
    count: int
    confidence: float  # mean top-1 probability in the bin (0 when empty)
    accuracy: float  # share of the bin's images whose top-1 is the label (0 when empty)


def reliability_bins(probabilities: torch.Tensor, labels: torch.Tensor,
                     bins: int = 15) -> list[ReliabilityBin]:
    """Equal-width bins over the top-1 confidence: the data of a reliability diagram."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    confidence, predicted = probabilities.detach().double().max(dim=1)
    correct = (predicted == labels.detach().long()).double()
    # Bin i holds (i/bins, (i+1)/bins]; a confidence of exactly 0 can only come from an all-zero
    # row and goes to bin 0.
    index = (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)
    result = []
    for i in range(bins):
        mask = index == i
        count = int(mask.sum())
        result.append(ReliabilityBin(
            i / bins, (i + 1) / bins, count,
            float(confidence[mask].mean()) if count else 0.0,
            float(correct[mask].mean()) if count else 0.0))
    return result


def expected_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor,
                               bins: int = 15) -> float:
    """ECE: the image-weighted mean |accuracy - confidence| over equal-width confidence bins
    (0 is perfect; 0.0 when there is no image)."""
    table = reliability_bins(probabilities, labels, bins)
    total = sum(b.count for b in table)
    if total == 0:
        return 0.0
    return float(sum(b.count * abs(b.accuracy - b.confidence) for b in table) / total)


def serving_temperature(calibration: Calibration | None, enabled: bool = True) -> float:
    """What serving divides the logits by: the manifest's temperature, 1.0 when the artifact
    has none or the deployer turned calibration off (SERVE_CALIBRATION=false)."""
    return calibration.temperature if enabled and calibration is not None else 1.0
