"""Build the network a manifest describes and load its weights safely."""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

# Torch-free since the serve process checks hashes too; re-exported for the existing importers.
from model_artifact.files import file_sha256 as file_sha256
from model_artifact.files import verified_file as verified_file
from model_artifact.manifest import ArtifactError, Manifest


def build_model(architecture: str, num_classes: int) -> nn.Module:
    """torchvision ResNet with its ImageNet head replaced by ``num_classes`` outputs."""
    if architecture != "resnet50":
        raise ArtifactError(f"unsupported architecture {architecture!r}")
    # Imported here: torchvision's import pulls in torch._dynamo (seconds), which a serving
    # worker that loads the compiled variant never needs.
    from torchvision import models

    model = models.resnet50(weights=None)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


# The head: the only layer that depends on the class set. Everything else is the backbone.
HEAD_PREFIX = "fc."


class WithFeatures(nn.Module):
    """``net`` (a network whose last layer is ``fc`` on a flat feature vector: torchvision's
    ResNet) answering ``(logits, pooled_features)``: what every served graph of a
    ``novelty.method == "features"`` artifact returns. Shares ``net``'s layers, changes nothing
    in ``net``; the logits are ``net``'s, computed by the same layers."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        body = copy.copy(net)  # shallow: the same layers, but its own module table
        body._modules = dict(net._modules)
        body._modules["fc"] = nn.Identity()
        self.body, self.fc = body, net.fc
        self.training = net.training

    @staticmethod
    def module_name(name: str) -> str:
        """``net``'s module ``name`` as named inside the wrapper (quantize.FP32_MODULES)."""
        return name if name == "fc" else f"body.{name}"

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(images)
        return self.fc(features), features


def split_output(out: torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A served graph's output -> (logits, pooled features or None): the one place that knows
    a WithFeatures graph answers a pair and every other graph (an old package) the logits."""
    if isinstance(out, (tuple, list)):
        return out[0], (out[1] if len(out) > 1 else None)
    return out, None


def logits_of(out: torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor]
              ) -> torch.Tensor:
    """The logits of a graph's output, whether it gives features or not (self-test, agreement)."""
    return split_output(out)[0]


def gives_features(manifest: Manifest) -> bool:
    """Whether this artifact's graphs must give the pooled features (novelty.method features)."""
    return manifest.novelty is not None and manifest.novelty.method == "features"


def tensors_sha256(state: Mapping[str, torch.Tensor], names: list[str]) -> str:
    """sha256 over ``names`` in sorted order: each tensor's name, dtype, shape, then its bytes
    (CPU, contiguous). Equal hashes mean equal tensors, whatever file or layout they came from."""
    digest = hashlib.sha256()
    for name in sorted(names):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def backbone_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """The backbone's fingerprint: every state_dict tensor except the head's (docs/artifact.md)."""
    return tensors_sha256(state, [n for n in state if not n.startswith(HEAD_PREFIX)])


def head_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """The head's tensors' hash: what a head-only load checks (docs/artifact.md)."""
    return tensors_sha256(state, [n for n in state if n.startswith(HEAD_PREFIX)])


def load_artifact(model_dir: str | os.PathLike[str], manifest: Manifest | None = None
                  ) -> tuple[nn.Module, Manifest]:
    """Manifest + weights -> a model in eval mode. Errors name the file and what is wrong.
    ``manifest``: the folder's manifest when the caller has already read it (Manifest.read,
    which checks the deployer's pin); read here otherwise."""
    manifest = manifest if manifest is not None else Manifest.read(model_dir)
    weights_path = verified_file(Path(model_dir) / manifest.weights_file,
                                 manifest.weights_sha256, "weights file")
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated zip, disallowed globals
        raise ArtifactError(f"{weights_path}: cannot be loaded as a state_dict: {exc}") from None
    if not isinstance(state, dict):
        raise ArtifactError(f"{weights_path}: expected a state_dict, got {type(state).__name__}")
    model = build_model(manifest.architecture, manifest.num_classes)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0:3]
        raise ArtifactError(
            f"{weights_path}: weights do not match the manifest ({manifest.architecture}, "
            f"{manifest.num_classes} classes): {' '.join(first)}"
        ) from None
    model.eval()
    return model, manifest
