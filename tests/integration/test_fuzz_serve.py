"""The short version of bench/fuzz_serve.py: 200 seeded hostile requests (plus 50 valid ones)
against a real host multi-model-server serving the artifact the real training code wrote.

Every answer must be what docs/serving-api.md says (the oracle decodes each image in-process
with model_artifact), every 200 must equal the in-process reference, and the worker must be the
same process at the end with no restart in MMS's log. The full run (2,000 hostile requests,
serving image or host MMS) is ``python -m bench.fuzz_serve --model-dir DIR [--host-mms]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.fuzz_serve import (
    SAMPLE_PHOTOS,
    HostMMS,
    Limits,
    Oracle,
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
    oracle = Oracle(serve_artifact, LIMITS)
    result = run_fuzz(fuzz_server, oracle, requests=200, seed=20261127, valid_every=5,
                      max_seconds=900)
    summary = result.summary()
    assert not result.stopped_early, summary
    assert result.hostile == 200 and result.valid >= 40, summary
    assert result.five_xx == 0 and not result.failures, summary
    assert result.workers_before and result.workers_after == result.workers_before, summary
    assert not result.restart_lines, summary
    # The mix really covered the cases: refusals of each kind and correct 200s.
    statuses = result.statuses
    assert statuses[200] >= 50 and statuses[400] >= 50, summary
    assert statuses[413] >= 5 and statuses[415] >= 2, summary


@pytest.mark.parametrize(("name", "status", "fragment"), [
    ("deep_json", 400, "nested too deeply"),  # was a 500: json's RecursionError
    ("aspect_1x20000", 413, "resizing its short side"),  # was GBs of tensors per request
    ("png_real_bomb", 413, "pixels"),
])
def test_found_by_the_fuzzer(fuzz_server: HostMMS, name: str, status: int,
                             fragment: str) -> None:
    """The requests that broke the server before the fixes in container_serve/inference.py."""
    from PIL import Image

    from bench.fuzz_serve import encode, png_bomb

    body, content_type = {
        "deep_json": (b"[" * 100_000 + b"]" * 100_000, "application/json"),
        "aspect_1x20000": (encode(Image.new("L", (1, 20000)), "PNG"), "image/png"),
        "png_real_bomb": (png_bomb(20000, 20000, real=True), "image/png"),
    }[name]
    workers = fuzz_server.worker_pids()
    reply = fuzz_server.invoke(body, content_type)
    assert reply.status == status, reply.body[:300]
    assert fragment in reply.body.decode(), reply.body[:300]
    assert fuzz_server.worker_pids() == workers
