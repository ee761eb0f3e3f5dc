"""Image decoding and evaluation preprocessing: the one definition training and serving share.

Training evaluates with :meth:`EvalPreprocessing.transform` on images from :func:`load_image`,
writes the ``EvalPreprocessing`` fields into the artifact manifest, and serving rebuilds the
same object from the manifest, so the served probabilities are the training code's own.
"""

from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_RATIO = 256 / 224  # torchvision's reference: resize to 256, crop 224
DEFAULT_MAX_PIXELS = 40_000_000  # about 6300 x 6300; larger headers are treated as bombs

# load_image checks the header's size against its own limit before decoding, with a message
# that names the size; Pillow's global guard would fire first with a vaguer one.
Image.MAX_IMAGE_PIXELS = None


class ImageDecodeError(ValueError):
    """The bytes are not an image we can decode; the message is one line for the client."""


class ImageTooLargeError(ImageDecodeError):
    """The image header claims more pixels than allowed (decompression bomb guard)."""


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


def load_image(
    source: bytes | str | os.PathLike[str],
    *,
    min_side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode an image file or bytes into upright 8-bit RGB.

    ``min_side``: JPEGs are decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both
    sides at least this long (Pillow's draft mode), which makes large photos several times
    cheaper to decode. Evaluation passes the resize size, so serving decodes identically.
    Multi-frame images (GIF, WebP) use their first frame.
    """
    try:
        stream = io.BytesIO(source) if isinstance(source, bytes) else Path(source).open("rb")
    except OSError as exc:
        raise ImageDecodeError(f"cannot open image: {exc.strerror or exc}") from None
    with stream:
        try:
            image = Image.open(stream)
        except Image.DecompressionBombError:
            raise ImageTooLargeError("image has too many pixels") from None
        except Exception:  # Pillow raises many types for bad input
            raise ImageDecodeError("not a decodable image (unknown or corrupt format)") from None
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"image is {width}x{height} pixels; the limit is {max_pixels} pixels"
            )
        if width == 0 or height == 0:
            raise ImageDecodeError("image has no pixels")
        try:
            if min_side and image.format == "JPEG":
                image.draft("RGB", (min_side, min_side))
            image.load()
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
        except Image.DecompressionBombError:
            raise ImageTooLargeError("image has too many pixels") from None
        except Exception:
            raise ImageDecodeError("image data is truncated or corrupt") from None


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

    def transform(self):  # -> torchvision.transforms.Compose (torchvision imported lazily)
        """PIL image -> normalised float CHW tensor: what serving runs per image."""
        from torchvision import transforms

        mode = transforms.InterpolationMode(self.interpolation)
        return transforms.Compose([
            transforms.Resize(self.resize, interpolation=mode),
            transforms.CenterCrop(self.crop_size),
            transforms.ToTensor(),
            transforms.Normalize(self.mean, self.std),
        ])

    def pixels(self):  # -> torchvision.transforms.Compose
        """The resize and crop of :meth:`transform`, ending in a uint8 CHW tensor: training's
        loader workers run this and :meth:`normalize` runs on whole batches on the device, so
        workers do a quarter of the work and copy a quarter of the bytes."""
        from torchvision import transforms

        steps = self.transform().transforms[:-2]
        return transforms.Compose([*steps, transforms.PILToTensor()])

    def normalize(self, pixels: Any) -> Any:  # torch.Tensor -> torch.Tensor
        """uint8 (N)CHW -> the float tensor :meth:`transform` gives: the same operations in the
        same order as ToTensor + Normalize, so on a CPU the result is bit-identical."""
        import torch

        mean = torch.tensor(self.mean, device=pixels.device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=pixels.device).view(-1, 1, 1)
        return pixels.float().div_(255).sub_(mean).div_(std)
