"""The serving image configured for SageMaker asynchronous inference (SERVE_ASYNC=true, what
deploy.py --async-output sets): a request body far above real-time's 6.5 MB limit is
classified, and the same body is a JSON 413 from the image without that configuration.

Needs Docker and the serving image (SERVE_IMAGE); the tiny artifact is tests/conftest.py's.
One worker per container, one container at a time; the body is a noise PNG (incompressible,
so ~3 bytes a pixel) of about 22 MB and 7.3 million pixels, under the unchanged pixel limit.
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from job_contract.images import local_image
from model_artifact.network import load_artifact
from model_artifact.preprocess import load_image
from tests.container.conftest import remove_containers, require_docker

REPO = Path(__file__).resolve().parents[2]
SAMPLE_DATA = REPO / "sample_data" / "photos5"
SERVE_IMAGE = local_image("serve")
RUN_ID = uuid.uuid4().hex[:8]
BIG_BODY_BYTES = 20 * 1024 * 1024
SIDE = 2700  # 2700 x 2700 x 3 bytes of noise: ~21.9 MB as an uncompressed-level PNG
CUSTOM = "X-Amzn-SageMaker-Custom-Attributes"

pytestmark = pytest.mark.container


@pytest.fixture(scope="module", autouse=True)
def _docker_ready() -> Iterator[None]:
    require_docker(SERVE_IMAGE)
    yield
    remove_containers(f"pytest-async-{RUN_ID}")


def _run(cmd: list[str], timeout: int = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.fixture(scope="module")
def model_dir(tiny_artifact: Path) -> Path:
    """The artifact the real training code wrote (tests/conftest.py), shared with the other
    container tests of the session."""
    return tiny_artifact


@pytest.fixture(scope="module")
def big_png() -> bytes:
    pixels = np.random.default_rng(7).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=0)
    body = buffer.getvalue()
    assert len(body) >= BIG_BODY_BYTES
    return body


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port: int, body: bytes, timeout: float = 120) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", data=body, method="POST",
        headers={"Content-Type": "image/png", "Accept": "application/json", CUSTOM: "top_k=5"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _ready(port: int, name: str) -> None:
    deadline, last = time.monotonic() + 240, None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=10) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last = repr(exc)
        time.sleep(2)
    logs = _run(["docker", "logs", "--tail", "60", name])
    pytest.fail(f"server not ready in 240 s: {last}\n{logs.stdout}{logs.stderr}")


def _serve_and_post(model_dir: Path, body: bytes, role: str, *env: str) -> tuple[int, bytes]:
    """`docker run IMAGE serve` (one worker, the given -e NAME=VALUE), one POST, removed."""
    port, name = _free_port(), f"pytest-async-{RUN_ID}-{role}"
    flags = [arg for pair in env for arg in ("-e", pair)]
    proc = _run(["docker", "run", "-d", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:8080",
                 "-e", "SAGEMAKER_MODEL_SERVER_WORKERS=1", "-e", "SERVE_THREADS_PER_WORKER=1",
                 *flags, "-v", f"{model_dir}:/opt/ml/model:ro", SERVE_IMAGE, "serve"])
    assert proc.returncode == 0, proc.stderr
    try:
        _ready(port, name)
        return _post(port, body)
    finally:
        _run(["docker", "rm", "-f", name], timeout=60)


def _reference(model_dir: Path, body: bytes) -> list[float]:
    """The artifact's probabilities for the body, computed here with model_artifact."""
    model, manifest = load_artifact(model_dir)
    pre = manifest.preprocessing
    pixels = pre.pixels()(load_image(body, min_side=pre.min_side))
    with torch.inference_mode():
        logits = model(pre.normalize(pixels.unsqueeze(0)))
    # Served probabilities are calibrated by default (docs/serving-api.md): softmax(logits / T).
    temperature = manifest.calibration.temperature if manifest.calibration else 1.0
    return torch.softmax(logits / temperature, dim=1)[0].tolist()


def test_async_configuration_classifies_a_20_mb_body(model_dir: Path, big_png: bytes):
    status, answer = _serve_and_post(model_dir, big_png, "async", "SERVE_ASYNC=true")
    assert status == 200, answer[:500]
    [prediction] = json.loads(answer)["predictions"]
    expected = _reference(model_dir, big_png)
    top = prediction["top_k"]
    assert len(top) == min(5, len(expected))
    assert [t["index"] for t in top] == sorted(range(len(expected)),
                                               key=lambda i: -expected[i])[:len(top)]
    for entry in top:
        assert abs(entry["probability"] - expected[entry["index"]]) < 1e-4, (entry, expected)


def test_without_async_configuration_the_same_body_is_a_json_413(model_dir: Path,
                                                                  big_png: bytes):
    status, answer = _serve_and_post(model_dir, big_png, "realtime")
    assert status == 413, answer[:500]
    error = json.loads(answer)
    assert error["code"] == 413 and "6553500" in error["message"]
