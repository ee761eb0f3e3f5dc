"""MMS batching through the real server (SERVE_BATCH_SIZE=4 on the CPU): concurrent requests
reach one worker together, share its forward pass, and each gets its own answer, the same as
when it comes alone (docs/serving-api.md, "GPU serving")."""

from __future__ import annotations

import http.client
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from container_serve.transformer import BATCH_HEADER

from .test_serve_mms import PHOTOS, start_server, stop_server

pytestmark = pytest.mark.slow
BATCH = 4


def invoke(port: int, body: bytes) -> tuple[int, int, dict]:
    """(status, requests the worker got together, JSON answer)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/invocations", body=body, headers={
            "Content-Type": "image/jpeg", "X-Amzn-SageMaker-Custom-Attributes": "top_k=5"})
        resp = conn.getresponse()
        return resp.status, int(resp.getheader(BATCH_HEADER, "0")), json.loads(resp.read())
    finally:
        conn.close()


def probabilities(answer: dict) -> dict[int, float]:
    return {t["index"]: t["probability"] for t in answer["predictions"][0]["top_k"]}


def test_concurrent_requests_share_a_forward_pass(serve_artifact: Path,
                                                  tmp_path: Path) -> None:
    photos = [p.read_bytes() for p in PHOTOS[:BATCH]]
    bad = photos[0][: len(photos[0]) // 3]  # a JPEG cut short: its own 400, not its batch's
    # One worker and a long delay: the concurrent requests surely meet in MMS's queue.
    server = start_server(serve_artifact, tmp_path, photos[0], SERVE_BATCH_SIZE=str(BATCH),
                          SERVE_BATCH_DELAY_MS="500")
    try:
        alone = [invoke(server.port, body) for body in photos]
        assert all(status == 200 for status, _, _ in alone)
        bodies = [*photos, bad] * 2
        with ThreadPoolExecutor(len(bodies)) as pool:
            together = list(pool.map(lambda body: invoke(server.port, body), bodies))
        log = server.log.read_text()
    finally:
        stop_server(server)
    assert f"up to {BATCH} requests per forward pass" in log
    assert max(batch for _, batch, _ in together) > 1, together  # they were batched
    assert max(batch for _, batch, _ in together) <= BATCH
    for body, (status, _, answer) in zip(bodies, together, strict=True):
        if body is bad:
            assert status == 400 and answer["code"] == 400
            continue
        assert status == 200
        expected = probabilities(alone[photos.index(body)][2])
        got = probabilities(answer)
        assert got.keys() == expected.keys()
        assert max(abs(got[k] - expected[k]) for k in got) < 1e-5
