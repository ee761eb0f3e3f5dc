"""The media types /invocations takes: one list for the handler and the nginx front."""

from __future__ import annotations

from job_contract.media import JSONLINES as JSONLINES
from job_contract.media import JSONLINES_TYPES as JSONLINES_TYPES

JSON = "application/json"
# Every format we decode has its type; the format itself is always sniffed from the bytes
# (model_artifact.preprocess.sniff), so these types only say "one encoded image".
IMAGE_TYPES = frozenset({
    "image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff",
    "application/x-image", "application/octet-stream",
})
CONTENT_TYPES = (*sorted(IMAGE_TYPES), JSON, *JSONLINES_TYPES)
# Bodies that multi-model-server's Java front end form-decodes before any handler runs; bytes
# that are not valid form encoding make it answer 500. The nginx front answers 415 for them.
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/")


def unsupported(media: str) -> str:
    return f"content type {media!r} is not supported; use one of {', '.join(CONTENT_TYPES)}"
