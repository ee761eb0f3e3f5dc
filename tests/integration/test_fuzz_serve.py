"""The short version of bench/fuzz_serve.py: 300 seeded hostile requests (plus 75 valid ones)
against a real host multi-model-server (behind the real nginx front) serving the artifact the
real training code wrote.

Every answer must have exactly the status docs/serving-api.md gives for that request (the
generator writes it down from what it built), every 200 must equal the in-process reference,
and the worker must be the same process at the end with no restart and no traceback in any
log. The full run (serving image or host MMS) is
``python -m bench.fuzz_serve --model-dir DIR [--host-mms]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.fuzz_serve import (
    SAMPLE_PHOTOS,
    HostMMS,
    Limits,
    Reference,
    run_fuzz,
)

pytestmark = pytest.mark.slow

LIMITS = Limits(max_bytes=400_000, max_images=4, max_pixels=4_000_000)  # cheap oversize bodies


@pytest.fixture(scope="module")
def fuzz_server(serve_artifact: Path) -> Iterator[HostMMS]:
    server = HostMMS(serve_artifact, LIMITS.env(), workers=1)
    try:
        server.wait_ready(SAMPLE_PHOTOS[0].read_bytes(), timeout=300)
        yield server
    finally:
        server.stop()


def test_hostile_requests_get_4xx_and_valid_ones_the_reference(fuzz_server: HostMMS,
                                                               serve_artifact: Path) -> None:
    result = run_fuzz(fuzz_server, Reference(serve_artifact), LIMITS, requests=300,
                      seed=20261201, valid_every=5, max_seconds=900)
    summary = result.summary()
    assert not result.stopped_early, summary
    assert result.hostile == 300 and result.valid >= 70, summary
    assert result.five_xx == 0 and not result.failures, summary
    assert result.workers_before and result.workers_after == result.workers_before, summary
    assert not result.restart_lines and not result.traceback_lines, summary
    # The mix really covered the cases: refusals of each kind, correct 200s, the new corpus.
    statuses, seen = result.statuses, {c.split("->")[0] for c in result.categories}
    assert statuses[200] >= 80 and statuses[400] >= 60, summary
    assert statuses[413] >= 8 and statuses[415] >= 2 and statuses[406] >= 1, summary
    assert {"at-limit", "bad-json", "route", "bomb"} <= seen, summary


def _thin_png() -> bytes:
    from PIL import Image

    from bench.fuzz_serve import encode

    return encode(Image.new("L", (1, 20000)), "PNG")


def _json_batch(*images: bytes) -> bytes:
    import base64
    import json

    return json.dumps({"images": [base64.b64encode(i).decode() for i in images]}).encode()


def _png_at(pixels: int) -> bytes:
    from PIL import Image

    from bench.fuzz_serve import encode

    side = int(pixels ** 0.5)
    return encode(Image.new("1", (side, pixels // side)), "PNG")


def _jpeg(size: tuple[int, int]) -> bytes:
    from PIL import Image

    from bench.fuzz_serve import encode

    return encode(Image.new("RGB", size, (90, 140, 60)), "JPEG", quality=60, optimize=True)


CASES = {  # name: (path, body, content type, status, fragment of the reason)
    "deep_json": ("/invocations", b"[" * 100_000 + b"]" * 100_000, "application/json", 400,
                  "nested too deeply"),  # was a 500: json's RecursionError
    "aspect_1x20000": ("/invocations", None, "image/png", 413, "resizing its short side"),
    "png_real_bomb": ("/invocations", None, "image/png", 413, "pixels"),
    "long_integer_json": ("/invocations", b'{"image": ' + b"9" * 4301 + b"}",
                          "application/json", 400, "4300 digits"),  # was a 500
    "utf16_json": ("/invocations", '{"image": "x"}'.encode("utf-16"), "application/json", 400,
                   "not UTF-8"),  # was accepted, against the documented UTF-8
    "batch_over_pixel_budget": ("/invocations", None, "application/json", 413,
                                "SERVE_MAX_REQUEST_PIXELS"),  # was ~17 s of decoding
    "phone_jpeg_8160x6144": ("/invocations", None, "image/jpeg", 200, "predictions"),
    "gif_content_type": ("/invocations", None, "image/gif", 200, "predictions"),  # was 415
    "malformed_query": ("/invocations?x=%zz", None, "image/jpeg", 400, "two hex digits"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_found_by_the_fuzzer_and_the_review(fuzz_server: HostMMS, name: str) -> None:
    """Requests that got a 500, a refusal they should not, or seconds of CPU before the fixes
    in container_serve/inference.py, model_artifact/preprocess.py and the nginx front."""
    from PIL import Image

    from bench.fuzz_serve import encode, png_bomb

    path, body, content_type, status, fragment = CASES[name]
    body = body or {
        "aspect_1x20000": _thin_png,
        "png_real_bomb": lambda: png_bomb(20000, 20000, real=True),
        "batch_over_pixel_budget": lambda: _json_batch(*[_png_at(LIMITS.max_pixels)] * 3),
        "phone_jpeg_8160x6144": lambda: _jpeg((8160, 6144)),
        "gif_content_type": lambda: encode(Image.open(SAMPLE_PHOTOS[0]), "GIF"),
        "malformed_query": SAMPLE_PHOTOS[0].read_bytes,
    }[name]()
    workers = fuzz_server.worker_pids()
    marks = fuzz_server.log_marks()
    reply = fuzz_server.request("POST", path, body, [("Content-Type", content_type)])
    assert reply.status == status, reply.body[:300]
    assert fragment in reply.body.decode(), reply.body[:300]
    assert fuzz_server.worker_pids() == workers
    assert "Traceback" not in fuzz_server.logs_since(marks)
