"""Build the network a manifest describes and load its weights safely."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torchvision import models

from model_artifact.files import file_sha256, verified_file
from model_artifact.manifest import ArtifactError, Manifest

__all__ = ["build_model", "file_sha256", "load_artifact", "verified_file"]  # re-exported


def build_model(architecture: str, num_classes: int) -> nn.Module:
    """torchvision ResNet with its ImageNet head replaced by ``num_classes`` outputs."""
    if architecture != "resnet50":
        raise ArtifactError(f"unsupported architecture {architecture!r}")
    model = models.resnet50(weights=None)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


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
