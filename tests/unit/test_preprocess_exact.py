"""Serving's and training's preprocessing is written with Pillow and torch, not torchvision
(whose import costs every serving worker seconds); it must give exactly torchvision's
Resize + CenterCrop + ToTensor + Normalize (and PILToTensor for training's uint8 pixels),
the pipeline the artifacts were trained and evaluated with."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision import transforms

from model_artifact.preprocess import EvalPreprocessing, load_image

REPO = Path(__file__).resolve().parents[2]
PHOTOS = sorted((REPO / "sample_data" / "photos5").glob("test/*/*.jpg"))[:6]


def _torchvision(pre: EvalPreprocessing, normalised: bool) -> transforms.Compose:
    mode = transforms.InterpolationMode(pre.interpolation)
    steps = [transforms.Resize(pre.resize, interpolation=mode),
             transforms.CenterCrop(pre.crop_size)]
    if normalised:
        return transforms.Compose([*steps, transforms.ToTensor(),
                                   transforms.Normalize(pre.mean, pre.std)])
    return transforms.Compose([*steps, transforms.PILToTensor()])


def _images() -> list[Image.Image]:
    photos = [load_image(p, min_side=None) for p in PHOTOS]
    # Tall, wide, square, and sides that make torchvision's truncation and rounding matter.
    odd = [Image.new("RGB", size, (10, 200, 90)) for size in ((97, 301), (301, 97), (64, 64),
                                                               (255, 173))]
    return photos + odd + [photos[0].rotate(90, expand=True).resize((331, 517))]


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize(("resize", "crop"), [(256, 224), (73, 64), (64, 64)])
def test_preprocessing_equals_torchvision_bit_for_bit(interpolation: str, resize: int,
                                                      crop: int) -> None:
    pre = EvalPreprocessing(resize=resize, crop_size=crop, interpolation=interpolation)
    assert len(PHOTOS) == 6
    for image in _images():
        ours, theirs = pre.transform()(image), _torchvision(pre, True)(image)
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape == (3, crop, crop)
        assert torch.equal(ours, theirs)
        assert torch.equal(pre.pixels()(image), _torchvision(pre, False)(image))


def test_serving_imports_neither_torchvision_nor_dynamo() -> None:
    """What a worker imports before the model loads; torchvision would bring torch._dynamo."""
    code = ("import sys, container_serve.handler_service, model_artifact.compiled; "
            "print(sorted(m for m in ('torchvision', 'torch._dynamo', 'torch._inductor') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=REPO)
    assert done.stdout.strip() == "[]"
