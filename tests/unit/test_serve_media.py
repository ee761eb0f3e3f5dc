"""One table of image magic bytes (job_contract.media): the predict driver labels a file with
the media type of the format the server will sniff and decode, for every format we decode."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from container_serve.media import IMAGE_TYPES
from drivers import predict
from job_contract.media import FORMAT_NAMES, sniff_image
from model_artifact import preprocess

PILLOW_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")


def encode(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", PILLOW_FORMATS)
def test_driver_and_server_agree_on_every_decoded_format(fmt: str) -> None:
    data = encode(fmt)
    assert preprocess.sniff(data) == fmt  # the plugin the server opens it with
    media_type = predict.content_type_of(Path("no-extension"), data)
    assert media_type == f"image/{fmt.lower()}"
    assert media_type in IMAGE_TYPES  # the server takes what the driver sends
    assert preprocess.load_image(data).size == (8, 8)


def test_every_format_is_named_in_the_refusal() -> None:
    for fmt in PILLOW_FORMATS:
        assert fmt.lower() in FORMAT_NAMES.lower()


@pytest.mark.parametrize("data", [b"", b"hello world", b"RIFF\0\0\0\0WAVE", b"\xff\xd8"])
def test_anything_else_is_no_image(data: bytes) -> None:
    assert sniff_image(data) is None
    assert preprocess.sniff(data) is None
    assert predict.content_type_of(Path("x.bin"), data) == "application/octet-stream"
