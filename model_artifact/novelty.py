""""None of my classes": a score of how far an image is from the training classes, computed
from the served logits alone, and the threshold above which serving abstains.

Why logits and not the 2048-d pooled features: every graph serving may run (fp32, frozen
TorchScript, int8, AOTInductor compiled, a shared backbone with per-model heads) outputs logits
only, so a logit score works on all of them without changing a graph, and what it needs to
store is O(classes), not O(2048^2). docs/artifact.md ("novelty") explains both methods:

- ``energy``: -T * logsumexp(logits / T) with the calibration temperature T (Liu et al. 2020):
  low when some class logit is large. Needs nothing but T; robust on tiny valid sets.
- ``mahalanobis``: the smallest Mahalanobis distance from the logit vector to a class's mean
  logit vector, with one shared covariance, fitted on the valid split (Lee et al. 2018, in logit
  space). Stores a classes x classes mean table and precision matrix, so it is offered only up
  to MAHALANOBIS_MAX_CLASSES classes.

Higher scores are further from the training classes for both.

- ``features``: the same class Gaussian with one shared covariance, but on the network's 2048-d
  pooled features, fitted on (a capped sample of) the TRAIN split; only the threshold comes from
  the valid split. The D x D precision does not fit a manifest, so it lives in ``novelty.pt``
  (NOVELTY_FILE, hashed in the manifest) as a whitening matrix W (the Cholesky factor of the
  precision) and the whitened class means M = mu W: a request costs one D x D and one C x D
  product. Every served graph of such an artifact answers (logits, features)
  (network.WithFeatures).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from model_artifact.manifest import NOVELTY_METHODS, ArtifactError, Manifest, Novelty

MAHALANOBIS_MAX_CLASSES = 64  # 2 x 64 x 64 numbers keep the manifest small (< 200 kB of JSON)
_SHRINKAGE = 0.1  # share of the covariance pulled to a scaled identity: tiny valid sets are
# singular (fewer images than classes), and this keeps the precision bounded


def energy_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(N,) free energy -T * logsumexp(logits / T): higher is further from every class."""
    z = logits.detach().double()
    return -temperature * torch.logsumexp(z / temperature, dim=1)


def fit_class_gaussian(logits: torch.Tensor, labels: torch.Tensor,
                       num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class mean logit vectors (C, D) and the shared precision matrix (D, D).

    A class without a valid image gets the mean of all images (it then scores like the rest)."""
    z, y = logits.detach().double(), labels.detach().long()
    if z.shape[0] == 0:
        raise ValueError("fitting the class Gaussians needs at least one image")
    overall = z.mean(dim=0)
    means = overall.repeat(num_classes, 1)
    for c in range(num_classes):
        mask = y == c
        if bool(mask.any()):
            means[c] = z[mask].mean(dim=0)
    centred = z - means[y]
    covariance = centred.T @ centred / max(1, z.shape[0])
    dim = covariance.shape[0]
    scale = float(torch.diagonal(covariance).mean()) or 1.0
    shrunk = (1 - _SHRINKAGE) * covariance + _SHRINKAGE * scale * torch.eye(dim,
                                                                            dtype=z.dtype)
    return means, torch.linalg.pinv(shrunk, hermitian=True)


def mahalanobis_score(logits: torch.Tensor, means: torch.Tensor,
                      precision: torch.Tensor) -> torch.Tensor:
    """(N,) the smallest squared Mahalanobis distance to a class mean: higher is further."""
    z = logits.detach().double()
    diff = z[:, None, :] - means.double()[None, :, :]  # (N, C, D)
    distances = torch.einsum("ncd,de,nce->nc", diff, precision.double(), diff)
    return distances.min(dim=1).values


def threshold_for_false_abstain(known_scores: torch.Tensor, rate: float) -> float:
    """The smallest threshold t at which at most ``rate`` of ``known_scores`` are > t.

    Serving abstains when score > t, so on these (known-class) images the false-abstain rate
    is at most ``rate`` and as close to it as ties allow. rate 0 gives the largest score."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"rate must be in [0, 1), got {rate}")
    scores = known_scores.detach().double().flatten()
    if scores.numel() == 0:
        raise ValueError("a threshold needs at least one known score")
    ordered = torch.sort(scores, descending=True).values
    allowed = math.floor(rate * scores.numel() + 1e-9)
    return float(ordered[allowed]) if allowed < scores.numel() else float(ordered[-1])


def auroc(known_scores: torch.Tensor, unknown_scores: torch.Tensor) -> float:
    """Area under the ROC curve for telling unknown (positive) from known by a higher score:
    the chance a random unknown scores above a random known, ties counting half."""
    known = torch.sort(known_scores.detach().double().flatten()).values
    unknown = unknown_scores.detach().double().flatten()
    if known.numel() == 0 or unknown.numel() == 0:
        raise ValueError("AUROC needs at least one known and one unknown score")
    below = torch.searchsorted(known, unknown, right=False).double()
    not_above = torch.searchsorted(known, unknown, right=True).double()
    wins = below.sum() + 0.5 * (not_above - below).sum()
    return float(wins / (known.numel() * unknown.numel()))


def novelty_scores(logits: torch.Tensor, novelty: Novelty) -> torch.Tensor:
    """(N,) the manifest's score for served logits: what serving compares with the threshold."""
    if novelty.method == "mahalanobis":
        return mahalanobis_score(logits, torch.tensor(novelty.means, dtype=torch.float64),
                                 torch.tensor(novelty.precision, dtype=torch.float64))
    return energy_score(logits, novelty.temperature)


def fit_novelty(logits: torch.Tensor, labels: torch.Tensor, *, rate: float,
                temperature: float = 1.0, method: str = "energy") -> Novelty:
    """The manifest's novelty field, fitted on the valid split's logits and labels."""
    if method not in NOVELTY_METHODS or method == "features":
        raise ValueError(f"method {method!r} is not a logit score (fit_feature_novelty: "
                         "features)")
    num_classes = logits.shape[1]
    if method == "mahalanobis" and num_classes > MAHALANOBIS_MAX_CLASSES:
        raise ValueError(f"mahalanobis stores classes^2 numbers: at most "
                         f"{MAHALANOBIS_MAX_CLASSES} classes, got {num_classes}")
    means = precision = ()
    if method == "mahalanobis":
        m, p = fit_class_gaussian(logits, labels, num_classes)
        means, precision = tuple(map(tuple, m.tolist())), tuple(map(tuple, p.tolist()))
    stats = Novelty(method, 0.0, rate, 0.0, int(logits.shape[0]), temperature, means, precision)
    scores = novelty_scores(logits, stats)
    threshold = threshold_for_false_abstain(scores, rate)
    observed = float((scores > threshold).double().mean())
    return Novelty(method, threshold, rate, observed, int(logits.shape[0]), temperature,
                   means, precision)


@dataclass(frozen=True)
class FeatureGaussian:
    """What the features score needs (novelty.pt): whitening (D, D) and whitened class means
    (C, D), float32. score(x) = min_c |x W - M_c|^2 = the Mahalanobis distance to class c."""

    whitening: torch.Tensor
    means: torch.Tensor


def whitened(means: torch.Tensor, precision: torch.Tensor) -> FeatureGaussian:
    """Class means (C, D) and precision (D, D) -> W with W W^T = precision, and M = means W."""
    p = precision.double()
    p = (p + p.T) / 2
    factor, info = torch.linalg.cholesky_ex(p)
    if int(info) != 0:  # not numerically positive definite: the symmetric square root
        values, vectors = torch.linalg.eigh(p)
        factor = vectors * values.clamp(min=0).sqrt()
    return FeatureGaussian(factor.float().contiguous(),
                           (means.double() @ factor).float().contiguous())


def feature_scores(features: torch.Tensor, gaussian: FeatureGaussian) -> torch.Tensor:
    """(N,) the smallest squared Mahalanobis distance of pooled features to a class mean."""
    z = (features.detach().float() @ gaussian.whitening).double()
    m = gaussian.means.double()
    distances = (z * z).sum(1, keepdim=True) - 2 * z @ m.T + (m * m).sum(1)[None, :]
    return distances.clamp(min=0).min(dim=1).values


def fit_feature_novelty(train_features: torch.Tensor, train_labels: torch.Tensor,
                        valid_features: torch.Tensor, *, num_classes: int, rate: float,
                        temperature: float = 1.0) -> tuple[Novelty, FeatureGaussian]:
    """Class Gaussians on the train split's features, threshold on the valid split's: the
    manifest's novelty field (file and sha256 still empty: written with the file) and the
    tensors for novelty.pt."""
    means, precision = fit_class_gaussian(train_features, train_labels, num_classes)
    gaussian = whitened(means, precision)
    scores = feature_scores(valid_features, gaussian)
    threshold = threshold_for_false_abstain(scores, rate)
    observed = float((scores > threshold).double().mean())
    novelty = Novelty("features", threshold, rate, observed, int(valid_features.shape[0]),
                      temperature, fit_images=int(train_features.shape[0]))
    return novelty, gaussian


def save_feature_gaussian(path: str | os.PathLike[str], gaussian: FeatureGaussian) -> None:
    torch.save({"whitening": gaussian.whitening, "means": gaussian.means}, path)


def load_feature_gaussian(model_dir: str | os.PathLike[str], manifest: Manifest
                          ) -> FeatureGaussian | None:
    """novelty.pt checked (sha256, then tensors only, shapes), or None when the artifact's
    method is not ``features``. ArtifactError names the file and what is wrong."""
    novelty = manifest.novelty
    if novelty is None or novelty.method != "features":
        return None
    from model_artifact.files import verified_file

    path = verified_file(Path(model_dir) / novelty.file, novelty.sha256, "novelty file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        whitening, means = data["whitening"].float(), data["means"].float()
    except Exception as exc:  # not a torch file, not the two tensors
        raise ArtifactError(f"{path}: not a novelty file: {type(exc).__name__}") from None
    dim = whitening.shape[0] if whitening.dim() == 2 else -1
    if tuple(whitening.shape) != (dim, dim) or tuple(means.shape) != (manifest.num_classes, dim):
        raise ArtifactError(f"{path}: whitening {tuple(whitening.shape)} and means "
                            f"{tuple(means.shape)} do not fit {manifest.num_classes} classes")
    return FeatureGaussian(whitening.contiguous(), means.contiguous())
