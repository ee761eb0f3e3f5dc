"""How closely a variant (int8, compiled) answers like the fp32 network it was made from:
what the manifest records for each variant and what serving warns about."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from model_artifact.manifest import ArtifactError
from model_artifact.network import logits_of
from model_artifact.torch_warnings import quiet

Network = Callable[[torch.Tensor], torch.Tensor]
# Below this share of top-1 answers in common with fp32, a reduced-precision variant (int8,
# bf16) visibly changes what the endpoint answers: issue 20's goal, at most 1 answer in 200.
AGREEMENT_BAR = 0.995


@dataclass(frozen=True)
class Agreement:
    top1: float  # share of images on which both give the same top-1 class
    images: int
    max_logit_difference: float  # largest |variant logit - fp32 logit| seen


def measure_agreement(fp32: Network, variant: Network,
                      batches: Iterable[torch.Tensor]) -> Agreement:
    """Run both networks on every batch; ArtifactError when there is no image."""
    same = total = 0
    worst = 0.0
    with torch.inference_mode(), quiet():
        for batch in batches:
            # Logits only: a features graph answers (logits, features) (network.WithFeatures).
            ours, theirs = logits_of(variant(batch)), logits_of(fp32(batch))
            same += int((ours.argmax(1) == theirs.argmax(1)).sum())
            total += int(batch.shape[0])
            worst = max(worst, float((ours.float() - theirs.float()).abs().max()))
    if total == 0:
        raise ArtifactError("top-1 agreement needs at least one image")
    return Agreement(same / total, total, worst)
