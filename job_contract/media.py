"""The image formats the serving image decodes, told apart by their magic bytes, torch-free.

The server sniffs the format from the bytes and opens them with that one Pillow plugin
(model_artifact.preprocess); the predict driver labels each file with the media type of the
same sniffed format. One table, so that both sides always agree on what an image is.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageFormat:
    name: str  # Pillow's format name (Image.open formats=)
    media_type: str


JPEG = ImageFormat("JPEG", "image/jpeg")
PNG = ImageFormat("PNG", "image/png")
WEBP = ImageFormat("WEBP", "image/webp")
GIF = ImageFormat("GIF", "image/gif")
BMP = ImageFormat("BMP", "image/bmp")
TIFF = ImageFormat("TIFF", "image/tiff")
_MAGIC: tuple[tuple[bytes, ImageFormat], ...] = (
    (b"\xff\xd8\xff", JPEG),
    (b"\x89PNG\r\n\x1a\n", PNG),
    (b"GIF87a", GIF),
    (b"GIF89a", GIF),
    (b"II*\x00", TIFF),
    (b"MM\x00*", TIFF),
    (b"BM", BMP),
)
FORMAT_NAMES = "JPEG, PNG, WebP, GIF, BMP or TIFF"

# JSON Lines (batch transform: one {"image": "<base64>"} record a line). The first is the
# type the SageMaker SDK's JSONLinesSerializer and the built-in algorithms use; the others are
# common spellings, taken alike. The transform driver and the server read this one list.
JSONLINES = "application/jsonlines"
JSONLINES_TYPES = (JSONLINES, "application/jsonl", "application/x-jsonlines")


def sniff_image(data: bytes) -> ImageFormat | None:
    """The format from the first bytes of ``data``, or None for anything not decoded."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":  # a RIFF container holding WebP
        return WEBP
    return next((fmt for magic, fmt in _MAGIC if data.startswith(magic)), None)
