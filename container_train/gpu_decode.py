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


# The CPU path's RandomResizedCrop (data.train_transform) takes torchvision's default scale and
# ratio; read them from there rather than restating them.
_RRC = transforms.RandomResizedCrop(1)
CROP_TRIES = 10  # torchvision's RandomResizedCrop.get_params tries 10 boxes, then centres one


def crop_boxes(sizes: torch.Tensor, scale: tuple[float, float] = _RRC.scale,
               ratio: tuple[float, float] = _RRC.ratio) -> torch.Tensor:
    """RandomResizedCrop.get_params for a whole batch at once: [N, 2] (height, width) -> [N, 4]
    (top, left, height, width), the same distribution drawn from torch's CPU generator with a
    fixed number of draws per batch (get_params costs ~0.1 ms per image in Python, a GPU
    batch of 128 would wait for it)."""
    n = sizes.shape[0]
    height, width = sizes[:, :1].double(), sizes[:, 1:].double()
    area = height * width * torch.empty(n, CROP_TRIES, dtype=torch.double).uniform_(*scale)
    log_ratio = torch.log(torch.tensor(ratio, dtype=torch.double))
    aspect = torch.exp(torch.empty(n, CROP_TRIES, dtype=torch.double).uniform_(*log_ratio))
    w, h = torch.sqrt(area * aspect).round(), torch.sqrt(area / aspect).round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.int().argmax(dim=1, keepdim=True)  # the first box that fits, as get_params
    h, w = h.gather(1, first), w.gather(1, first)
    top = (torch.rand(n, 1, dtype=torch.double) * (height - h + 1)).floor()
    left = (torch.rand(n, 1, dtype=torch.double) * (width - w + 1)).floor()
    # No box fits in 10 tries: get_params' fallback, the centre crop clamped to the ratio.
    in_ratio = width / height
    fh = torch.where(in_ratio < min(ratio), (width / min(ratio)).round(), height)
    fw = torch.where(in_ratio > max(ratio), (height * max(ratio)).round(), width)
    fh, fw = torch.minimum(fh, height), torch.minimum(fw, width)
    missed = ~fits.any(dim=1, keepdim=True)
    boxes = torch.cat([torch.where(missed, ((height - fh) / 2).floor(), top),
                       torch.where(missed, ((width - fw) / 2).floor(), left),
                       torch.where(missed, fh, h), torch.where(missed, fw, w)], dim=1)
    return boxes.long()


@dataclass(frozen=True)
class DeviceAugment:
    """What the device does to a batch: decode, then random resized crop + flip (augment) or
    the evaluation resize + centre crop, then normalise: what data.train_transform and
    EvalPreprocessing.pixels do with Pillow, on tensors."""

    pre: EvalPreprocessing
    augment: bool = True

    def _resize(self, image: torch.Tensor, size: list[int]) -> torch.Tensor:
        """uint8 CHW -> float 1CHW of ``size`` (antialiased as Pillow's resize is)."""
        mode = self.pre.interpolation
        return torch.nn.functional.interpolate(
            image.unsqueeze(0).float(), size=size, mode=mode, antialias=mode != "nearest",
            align_corners=None if mode == "nearest" else False)

    def _centre(self, image: torch.Tensor) -> torch.Tensor:
        """Resize(resize): the short side to ``resize``, the long one truncated, as
        torchvision's; then the centre crop."""
        height, width = image.shape[-2:]
        short, long = self.pre.resize, int(self.pre.resize * max(height, width)
                                           / min(height, width))
        size = [short, long] if height <= width else [long, short]
        return F.center_crop(self._resize(image, size), [self.pre.crop_size] * 2)

    def crops(self, images: list[torch.Tensor]) -> torch.Tensor:
        """uint8 CHW images (any sizes) -> float [N, 3, crop, crop] of whole pixel levels."""
        side = self.pre.crop_size
        out = torch.empty(len(images), 3, side, side, device=images[0].device)
        if not self.augment:
            for i, image in enumerate(images):
                out[i] = self._centre(image)[0]
            return out.round_().clamp_(0, 255)
        boxes = crop_boxes(torch.tensor([list(image.shape[-2:]) for image in images])).tolist()
        for i, (image, (top, left, h, w)) in enumerate(zip(images, boxes, strict=True)):
            out[i] = self._resize(image[:, top:top + h, left:left + w], [side, side])[0]
        flip = (torch.rand(len(images)) < 0.5).to(out.device).view(-1, 1, 1, 1)
        return torch.where(flip, out.flip(-1), out).round_().clamp_(0, 255)

    def __call__(self, batch: EncodedBatch, device: torch.device) -> torch.Tensor:
        pixels = self.crops(decode_batch(batch, device))
        return self.pre.normalize(pixels.contiguous(memory_format=torch.channels_last))


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
