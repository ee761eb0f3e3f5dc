"""Image decoding and evaluation preprocessing: the one definition training and serving share.

Training evaluates with :meth:`EvalPreprocessing.transform` on images from :func:`load_image`,
writes the ``EvalPreprocessing`` fields into the artifact manifest, and serving rebuilds the
same object from the manifest, so the served probabilities are the training code's own.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image, ImageOps

from job_contract.media import FORMAT_NAMES, sniff_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_RATIO = 256 / 224  # torchvision's reference: resize to 256, crop 224
# Pixels an image may decode to (after JPEG draft mode): about 6300 x 6300. A 48-50 MP phone
# JPEG decodes at 1/8 scale (~0.75 MP) and passes; a 40 Mpx PNG costs ~1 s and ~200 MiB.
DEFAULT_MAX_PIXELS = 40_000_000
# Pixels any image header may claim, whatever draft mode would keep: 16384 x 16384, above a
# 200 MP phone sensor (16320 x 12240). A progressive JPEG buffers all its DCT coefficients
# (~3 bytes per header pixel) even when decoded at 1/8 scale, so this bounds that memory.
MAX_HEADER_PIXELS = 1 << 28
HEADER_SIZE = "header_size"  # open_image's key in Image.info: (width, height) of the header

# open_image checks the header's size against its own limits before decoding, with a message
# that names the size; Pillow's global guard would fire first with a vaguer one.
Image.MAX_IMAGE_PIXELS = None


class ImageDecodeError(ValueError):
    """The bytes are not an image we can decode; the message is one line for the client."""


class ImageTooLargeError(ImageDecodeError):
    """The image would decode or resize to more pixels than allowed (bomb guard)."""


def sniff(data: bytes) -> str | None:
    """The Pillow format name from the magic bytes, or None for anything we do not decode.
    The format is sniffed, never trusted from a file name or a content type, and Pillow opens
    the bytes with that one plugin only (Image.open formats=)."""
    fmt = sniff_image(data)
    return fmt.name if fmt else None


def resized_pixels(size: tuple[int, int], resize: int) -> int:
    """Pixels of torchvision's Resize(resize) output: the short side becomes ``resize``."""
    short, long = min(size), max(size)
    return resize * int(resize * long / short)


def check_resized_pixels(size: tuple[int, int], resize: int, max_pixels: int) -> None:
    """Refuse extreme aspect ratios before Resize: a 1x200000 PNG is a few hundred bytes, but
    resizing its short side to ``resize`` makes ``resize`` x (200000 * resize) pixels (GBs of
    float tensors: the process is OOM-killed). The limit is the same pixel budget as decoding."""
    resized = resized_pixels(size, resize)
    if resized > max_pixels:
        raise ImageTooLargeError(
            f"image is {size[0]}x{size[1]} pixels; resizing its short side to {resize} "
            f"would make {resized} pixels; the limit is {max_pixels} pixels"
        )


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; transparency is composited onto white."""
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / float grayscale: scale the actual range to 0..255 rather than clipping.
        lo, hi = image.getextrema()
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        image = image.point(lambda v: (v - lo) * scale).convert("L")
    if image.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _check_size(image: Image.Image, min_side: int | None, max_pixels: int) -> None:
    """Header cap, then draft mode (JPEG), then the limit on what will really be decoded."""
    width, height = image.size
    if width == 0 or height == 0:
        raise ImageDecodeError("image has no pixels")
    if width * height > MAX_HEADER_PIXELS:
        raise ImageTooLargeError(f"image header claims {width}x{height} pixels; the limit for "
                                 f"any image is {MAX_HEADER_PIXELS} pixels")
    image.info[HEADER_SIZE] = (width, height)  # what decoding still reads, whatever draft keeps
    if min_side and image.format == "JPEG":
        image.draft("RGB", (min_side, min_side))  # sets the decode size; decodes nothing yet
    if image.size[0] * image.size[1] > max_pixels:
        scaled = f" (decoded at {image.size[0]}x{image.size[1]})" if image.size != (
            width, height) else ""
        raise ImageTooLargeError(f"image is {width}x{height} pixels{scaled}; the limit is "
                                 f"{max_pixels} decoded pixels")


def open_image(
    source: bytes | BinaryIO,
    *,
    min_side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    resize: int | None = None,
) -> Image.Image:
    """Read an image's header only (nothing is decoded) and check what decoding it would cost.

    ``min_side``: JPEGs are set to decode at the smallest DCT scale (1/2, 1/4, 1/8) that keeps
    both sides at least this long (Pillow's draft mode), which makes large photos several
    times cheaper to decode; ``image.size`` is then the size that will be decoded, and
    ``max_pixels`` applies to it. ``resize``: also refuse shapes whose Resize(resize) output
    would exceed ``max_pixels`` (:func:`check_resized_pixels`). :func:`decode` finishes it.
    """
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    head = stream.read(16)
    stream.seek(0)
    fmt = sniff(head)
    if fmt is None:
        raise ImageDecodeError(f"not a {FORMAT_NAMES} file")
    try:
        image = Image.open(stream, formats=[fmt])
    except Exception:  # Pillow raises many types for bad input
        raise ImageDecodeError(f"not a decodable {fmt} image (corrupt header)") from None
    _check_size(image, min_side, max_pixels)
    if resize:
        check_resized_pixels(image.size, resize, max_pixels)
    return image


def decode(image: Image.Image) -> Image.Image:
    """An image from :func:`open_image` -> upright 8-bit RGB. Multi-frame images (GIF, WebP)
    use their first frame."""
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except Exception:
        raise ImageDecodeError("image data is truncated or corrupt") from None


def load_image(
    source: bytes | str | os.PathLike[str],
    *,
    min_side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    resize: int | None = None,
) -> Image.Image:
    """Decode an image file or bytes into upright 8-bit RGB: :func:`open_image` (checks, JPEG
    draft mode at ``min_side``) then :func:`decode`. Evaluation passes the resize size as
    ``min_side``, so serving decodes identically."""
    try:
        stream = io.BytesIO(source) if isinstance(source, bytes) else Path(source).open("rb")
    except OSError as exc:
        raise ImageDecodeError(f"cannot open image: {exc.strerror or exc}") from None
    with stream:
        return decode(open_image(stream, min_side=min_side, max_pixels=max_pixels,
                                 resize=resize))


@dataclass(frozen=True)
class EvalPreprocessing:
    """Resize the short side, centre-crop, normalise: written verbatim into the manifest."""

    resize: int
    crop_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    jpeg_draft: bool = True  # decode JPEGs with Pillow's draft mode at min_side=resize

    @classmethod
    def for_image_size(cls, image_size: int) -> EvalPreprocessing:
        return cls(resize=round(image_size * RESIZE_RATIO), crop_size=image_size)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalPreprocessing:
        fields = dict(data)
        fields["mean"] = tuple(float(v) for v in fields["mean"])
        fields["std"] = tuple(float(v) for v in fields["std"])
        spec = cls(**fields)
        spec.validate()
        return spec

    def validate(self) -> None:
        if not (isinstance(self.resize, int) and isinstance(self.crop_size, int)):
            raise ValueError("resize and crop_size must be integers")
        if not 0 < self.crop_size <= self.resize:
            raise ValueError(f"need 0 < crop_size <= resize, got {self.crop_size}, {self.resize}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need three values, std positive")
        if self.interpolation not in ("bilinear", "bicubic", "nearest"):
            raise ValueError(f"unknown interpolation {self.interpolation!r}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @property
    def min_side(self) -> int | None:
        return self.resize if self.jpeg_draft else None

    def load(self, source: bytes | str | os.PathLike[str],
             max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
        """:func:`load_image` as this preprocessing needs it: JPEG draft at the resize size,
        and shapes whose resize would exceed ``max_pixels`` refused (training and serving)."""
        return load_image(source, min_side=self.min_side, max_pixels=max_pixels,
                          resize=self.resize)

    def transform(self) -> Callable[[Image.Image], Any]:  # PIL image -> torch.Tensor
        """PIL image -> normalised float CHW tensor: what serving runs per image.

        torchvision's Resize(resize) + CenterCrop(crop_size) + ToTensor + Normalize, written out
        with Pillow and torch (bit-identical: tests/unit/test_preprocess_exact.py), because
        importing torchvision imports torch._dynamo: seconds of every serving worker's start."""
        return _Pipeline(self, normalised=True)

    def pixels(self) -> Callable[[Image.Image], Any]:  # PIL image -> torch.Tensor
        """The resize and crop of :meth:`transform`, ending in a uint8 CHW tensor: training's
        loader workers run this and :meth:`normalize` runs on whole batches on the device, so
        workers do a quarter of the work and copy a quarter of the bytes."""
        return _Pipeline(self, normalised=False)

    def resize_crop(self, image: Image.Image) -> Image.Image:
        """torchvision's Resize(resize) (shorter side to ``resize``, the longer one truncated
        as torchvision does) then CenterCrop(crop_size), on a PIL image."""
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(self.resize * long / short)
        size = (self.resize, new_long) if width <= height else (new_long, self.resize)
        if size != image.size:
            image = image.resize(size, _PIL_FILTERS[self.interpolation])
        width, height = image.size
        top = round((height - self.crop_size) / 2.0)  # Python 3 round: as torchvision
        left = round((width - self.crop_size) / 2.0)
        return image.crop((left, top, left + self.crop_size, top + self.crop_size))

    def normalize(self, pixels: Any) -> Any:  # torch.Tensor -> torch.Tensor
        """uint8 (N)CHW -> the float tensor :meth:`transform` gives: the same operations in the
        same order as ToTensor + Normalize, so on a CPU the result is bit-identical."""
        import torch

        mean = torch.tensor(self.mean, device=pixels.device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=pixels.device).view(-1, 1, 1)
        return pixels.float().div_(255).sub_(mean).div_(std)


_PIL_FILTERS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                "bicubic": Image.Resampling.BICUBIC}  # torchvision's mapping for PIL images


class _Pipeline:
    """A preprocessing as a picklable callable (training's loader workers receive it)."""

    def __init__(self, pre: EvalPreprocessing, normalised: bool) -> None:
        self.pre, self.normalised = pre, normalised

    def __call__(self, image: Image.Image) -> Any:  # torch.Tensor
        import numpy as np
        import torch

        image = self.pre.resize_crop(image)
        array = np.array(image, np.uint8, copy=True)  # HWC, as torchvision's ToTensor reads it
        pixels = torch.from_numpy(array).view(image.size[1], image.size[0], -1)
        pixels = pixels.permute(2, 0, 1).contiguous()
        return self.pre.normalize(pixels) if self.normalised else pixels


def image_batches(paths: Sequence[str | os.PathLike[str]], pre: EvalPreprocessing,
                  batch_size: int = 16) -> Iterator[Any]:  # torch.Tensor
    """Image files -> normalised [N, 3, crop, crop] channels_last batches, decoded and
    transformed exactly as serving does (:meth:`EvalPreprocessing.transform`): what int8
    calibration and the variants' agreement checks feed the networks."""
    import torch

    transform = pre.transform()
    batch: list[torch.Tensor] = []
    for path in paths:
        batch.append(transform(load_image(path, min_side=pre.min_side)))
        if len(batch) == batch_size:
            yield torch.stack(batch).contiguous(memory_format=torch.channels_last)
            batch = []
    if batch:
        yield torch.stack(batch).contiguous(memory_format=torch.channels_last)
