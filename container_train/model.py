"""ResNet50 for transfer learning: initial weights, the new head, and the freezing policy."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet50_Weights

from container_train.errors import TrainingError
from model_artifact.network import build_model

log = logging.getLogger(__name__)

# Stages unfrozen by trainable-layers=N, last first; "all" (5) adds the stem.
STAGES = ("layer4", "layer3", "layer2", "layer1")
STEM = ("conv1", "bn1")
IMAGENET_WEIGHTS = (ResNet50_Weights.IMAGENET1K_V2, ResNet50_Weights.IMAGENET1K_V1)


def imagenet_weights_path() -> Path | None:
    """torchvision's ImageNet weights in the local torch cache (baked into the image)."""
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    for weights in IMAGENET_WEIGHTS:
        path = checkpoints / weights.url.rsplit("/", 1)[-1]
        if path.is_file():
            return path
    return None


def _load_backbone(model: nn.Module, path: Path) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainingError(f"cannot load weights file {path}: {exc}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise TrainingError(f"weights file {path} does not hold a state_dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    # The head is sized for the new classes: never take it from the file.
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise TrainingError(
            f"weights file {path} does not fit ResNet50: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    log.info("loaded backbone weights from %s", path)


def resolve_auto_weights(weights: str) -> str:
    """weights=auto -> imagenet when the image holds the ImageNet weights, else none (logged:
    a model trained from random init on a small data set predicts little)."""
    if weights != "auto":
        return weights
    if imagenet_weights_path() is not None:
        log.info("weights=auto: using the ImageNet weights baked into the image")
        return "imagenet"
    log.warning("weights=auto: this image has no ImageNet weights, training from random init "
                "(predictions on a small data set will not be meaningful)")
    return "none"


def initial_weights_path(weights: str, pretrained_dir: Path | None) -> Path | None:
    """Resolve the `weights` hyperparameter to a file (None = random init)."""
    weights = resolve_auto_weights(weights)
    if weights == "none":
        return None
    if weights == "imagenet":
        path = imagenet_weights_path()
        if path is None:
            raise TrainingError(
                "weights=imagenet but torchvision's ResNet50 ImageNet weights are not in the "
                f"torch cache ({Path(torch.hub.get_dir()) / 'checkpoints'}): build the image "
                "with them baked in, give a 'pretrained' channel with a weights file, or set "
                "weights=none"
            )
        return path
    if pretrained_dir is None:
        raise TrainingError(
            f"weights={weights!r} names a file, but the job has no 'pretrained' channel "
            "(valid values: auto, imagenet, none, or a file name in the 'pretrained' channel)"
        )
    path = pretrained_dir / weights
    if not path.is_file():
        found = sorted(p.name for p in pretrained_dir.iterdir()) if pretrained_dir.is_dir() else []
        raise TrainingError(f"weights file {weights!r} not in the pretrained channel "
                            f"({pretrained_dir}); it holds {found[:10]}")
    return path


def create_model(num_classes: int, weights_path: Path | None) -> nn.Module:
    model = build_model("resnet50", num_classes)
    if weights_path is not None:
        _load_backbone(model, weights_path)
    return model


def trainable_modules(model: nn.Module, trainable_stages: int) -> list[nn.Module]:
    names = ["fc", *STAGES[:min(trainable_stages, 4)]]
    if trainable_stages >= 5:
        names += STEM
    return [getattr(model, name) for name in names]


def apply_freezing(model: nn.Module, trainable_stages: int) -> list[nn.Parameter]:
    """Freeze everything but the head and the last ``trainable_stages`` stages."""
    for param in model.parameters():
        param.requires_grad_(False)
    params = []
    for module in trainable_modules(model, trainable_stages):
        for param in module.parameters():
            param.requires_grad_(True)
            params.append(param)
    return params


def set_train_mode(model: nn.Module, trainable_stages: int) -> None:
    """Train mode only where weights train: frozen BatchNorm layers keep their statistics."""
    model.eval()
    for module in trainable_modules(model, trainable_stages):
        module.train()


def count_parameters(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
