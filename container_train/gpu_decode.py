"""Training images decoded and augmented on the training device (``gpu-decode``).

The CPU path (data.ImageListDataset) decodes, crops and flips every image in the DataLoader
workers; on a fast GPU 8-16 workers cannot keep up (bench/README.md). Here the workers only
read the file bytes and check the header; in the training process each batch's JPEGs are
decoded together on the device (``torchvision.io.decode_jpeg``, nvjpeg on CUDA), then cropped,
resized and flipped per image and normalised there (``EvalPreprocessing.normalize``, the one
definition). Files the device decoder cannot turn into what :func:`load_image` gives (PNG and
other formats, CMYK JPEGs, EXIF-rotated JPEGs, JPEGs only Pillow's draft mode keeps within the
pixel limit) are decoded by Pillow in the worker, as on the CPU path, and join the batch as
pixels. The same code runs on a CPU device: that is how the tests check it.

Random crops and flips are drawn in the training process from torch's CPU generator, so they
depend on (seed, epoch) only, whatever the number of workers, and a resumed epoch restores
them with the generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import functional as F

from container_train.errors import TrainingError
from model_artifact.preprocess import (
    EvalPreprocessing,
    ImageDecodeError,
    load_image,
    open_image,
)

EXIF_ORIENTATION = 0x0112
# Pillow modes whose JPEGs decode_jpeg(mode=RGB) turns into the RGB pixels load_image gives.
DEVICE_JPEG_MODES = ("RGB", "L")
GPU_DECODE_CHOICES = ("auto", "true", "false")


def resolve_gpu_decode(requested: str, device: torch.device) -> bool:
    """The ``gpu-decode`` hyperparameter on this device. auto: on with CUDA, off elsewhere;
    true without CUDA stops the job with a one-line reason (as precision=bf16 does)."""
    if requested not in GPU_DECODE_CHOICES:
        raise ValueError(f"gpu-decode must be one of {GPU_DECODE_CHOICES}, got {requested!r}")
    if requested == "auto":
        return device.type == "cuda"
    if requested == "true" and device.type != "cuda":
        raise TrainingError(f"gpu-decode=true needs a CUDA GPU and this job runs on "
                            f"{device.type}: use gpu-decode=auto or false")
    return requested == "true"


def device_decodable(data: bytes, pre: EvalPreprocessing) -> bool:
    """True for a JPEG that decode_jpeg decodes to what :func:`load_image` would (upright RGB)
    within the pixel limits at full size; anything else is decoded by Pillow."""
    try:
        image = open_image(data, resize=pre.resize)  # header only; no draft mode
    except ImageDecodeError:
        return False  # Pillow says why, or decodes it in draft mode within the limits
    if image.format != "JPEG" or image.mode not in DEVICE_JPEG_MODES:
        return False
    return image.getexif().get(EXIF_ORIENTATION, 1) == 1


def _pixels(image: Image.Image) -> torch.Tensor:
    return F.pil_to_tensor(image)


Payload = bytearray | torch.Tensor | str


class EncodedImageDataset(Dataset):
    """(payload, label, path) per sample: payload is the JPEG file (bytearray: pickled through
    the worker queue, where a tensor per image would hold a file descriptor each), Pillow's
    decoded pixels (uint8 CHW tensor) for anything else, or why the file cannot be used (str):
    a worker does not raise, so the training process can report the file in one line."""

    def __init__(self, samples: list[tuple[Path, int]], pre: EvalPreprocessing):
        self.samples = samples
        self.pre = pre

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Payload, int, str]:
        path, label = self.samples[index]
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            return f"cannot be read: {exc.strerror or exc}", label, str(path)
        if device_decodable(data, self.pre):
            return bytearray(data), label, str(path)
        try:
            return _pixels(self.pre.load(data)), label, str(path)
        except ImageDecodeError as exc:
            return f"cannot be decoded: {exc}", label, str(path)


@dataclass(frozen=True)
class DeviceAugment:
    """What the device does to a batch: decode, then random resized crop + flip (augment) or
    the evaluation resize + centre crop, then normalise."""

    pre: EvalPreprocessing
    augment: bool = True

    @property
    def interpolation(self) -> transforms.InterpolationMode:
        return transforms.InterpolationMode(self.pre.interpolation)

    def crop(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 CHW (any size) -> uint8 CHW crop_size x crop_size, as data.train_transform
        (augment) or EvalPreprocessing.pixels does it with Pillow."""
        size = [self.pre.crop_size, self.pre.crop_size]
        if not self.augment:
            image = F.resize(image, [self.pre.resize], self.interpolation, antialias=True)
            return F.center_crop(image, size)
        rrc = transforms.RandomResizedCrop(self.pre.crop_size)  # the CPU path's scale, ratio
        top, left, height, width = rrc.get_params(image, rrc.scale, rrc.ratio)
        image = F.resized_crop(image, top, left, height, width, size, self.interpolation,
                               antialias=True)
        return F.hflip(image) if torch.rand(1) < 0.5 else image

    def __call__(self, batch: EncodedBatch, device: torch.device) -> torch.Tensor:
        images = decode_batch(batch, device)
        pixels = torch.stack([self.crop(image) for image in images])
        pixels = pixels.contiguous(memory_format=torch.channels_last)
        return self.pre.normalize(pixels)


@dataclass
class EncodedBatch:
    """A loader batch before decoding: the engine calls :meth:`to_device`."""

    payloads: list[Payload]
    paths: list[str]
    augment: DeviceAugment

    def to_device(self, device: torch.device) -> torch.Tensor:
        """Normalised float [N, 3, crop, crop] channels_last on ``device``."""
        return self.augment(self, device)


@dataclass(frozen=True)
class Collate:
    """DataLoader collate_fn: (payload, label, path) samples -> (EncodedBatch, labels)."""

    augment: DeviceAugment

    def __call__(self, samples: list[tuple[Payload, int, str]]
                 ) -> tuple[EncodedBatch, torch.Tensor]:
        payloads, labels, paths = zip(*samples, strict=True)
        return (EncodedBatch(list(payloads), list(paths), self.augment),
                torch.tensor(labels, dtype=torch.long))


def _decode_one(data: torch.Tensor, path: str, device: torch.device) -> torch.Tensor:
    """One JPEG the batched decode refused: decode_jpeg alone, then Pillow (which accepts some
    files nvjpeg does not); a TrainingError naming the file when neither can."""
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        pass
    try:
        return _pixels(load_image(bytes(data.numpy()))).to(device)
    except ImageDecodeError as exc:
        raise TrainingError(f"training image {path} cannot be decoded: {exc}") from None


def _decode_jpegs(jpegs: list[torch.Tensor], paths: list[str], device: torch.device
                  ) -> list[torch.Tensor]:
    try:
        return decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:  # one bad file fails the whole batch: find it, keep the others
        return [_decode_one(data, path, device) for data, path in zip(jpegs, paths,
                                                                       strict=True)]


def decode_batch(batch: EncodedBatch, device: torch.device) -> list[torch.Tensor]:
    """Every image of the batch as uint8 CHW RGB on ``device``: the JPEGs decoded together,
    the pixels Pillow decoded in the worker copied over."""
    images: list[torch.Tensor] = []
    jpeg_at: list[int] = []
    for payload, path in zip(batch.payloads, batch.paths, strict=True):
        if isinstance(payload, str):
            raise TrainingError(f"training image {path} {payload}")
        if isinstance(payload, bytearray):
            jpeg_at.append(len(images))
            images.append(torch.frombuffer(payload, dtype=torch.uint8))
        else:
            images.append(payload.to(device, non_blocking=True))
    if jpeg_at:
        decoded = _decode_jpegs([images[i] for i in jpeg_at],
                                [batch.paths[i] for i in jpeg_at], device)
        for i, image in zip(jpeg_at, decoded, strict=True):
            images[i] = image
    return images
