"""The serving image under batch transform, with this test playing SageMaker's batch agent:
GET /execution-parameters, a JSON Lines file of the sample photos split as SageMaker splits it
(Line; MultiRecord mini-batches under MaxPayloadInMB, and SingleRecord), the mini-batches
posted, the answers assembled with AssembleWith Line, and every output line checked against a
single-image /invocations of the same photo. A planted bad record gives an error line in its
place; in strict mode its mini-batch fails with a 4xx. docs/serving-api.md, "Batch transform".

One container (the tiny artifact of tests/conftest.py), 49 photos at 64 px; then the SDK v3's
own local-mode transform job (a second container, started and removed by the SDK).
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from PIL import Image

from job_contract.images import local_image
from tests.conftest import HELD_OUT
from tests.container.conftest import remove_containers, require_docker

SERVE_IMAGE = local_image("serve")
REPO = Path(__file__).resolve().parents[2]
DRIVERS_PYTHON = REPO / ".venv-drivers" / "bin" / "python"
NAME = f"batch-transform-{uuid.uuid4().hex[:8]}"
MIB = 1024 * 1024
JSONL = "application/jsonlines"
BAD_AT = 10  # the planted bad record's index in the file
BAD_RECORD = b'{"image": "bm90IGFuIGltYWdl"}\n'  # base64 of "not an image"

# A loaded CI machine can take minutes to load a worker: MMS's time-out covers loading too. The
# graph does not matter here (every comparison is within this container): eager starts fastest.
SLOW_MACHINE = ("-e", "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS=600", "-e", "SERVE_GRAPH=eager")

pytestmark = pytest.mark.container


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(port: int, path: str, data: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                 headers=headers or {}, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), err.read()


def _wait_ready(port: int) -> None:
    jpeg = HELD_OUT[0].read_bytes()
    deadline, last = time.monotonic() + 600, None
    while time.monotonic() < deadline:
        try:
            last = _request(port, "/invocations", jpeg, {"Content-Type": "image/jpeg"})[:2]
            if last[0] == 200:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last = repr(exc)
        time.sleep(2)
    logs = subprocess.run(["docker", "logs", "--tail", "60", NAME], capture_output=True,
                          text=True)
    pytest.fail(f"server not ready in 600 s: {last}\n{logs.stdout}{logs.stderr}")


@pytest.fixture(scope="module", autouse=True)
def _docker_ready():
    require_docker(SERVE_IMAGE)  # before the tiny artifact is trained for nothing


@pytest.fixture(scope="module")
def server(tiny_artifact: Path):
    """`docker run IMAGE serve` as a transform job starts it: 1 MB payloads (as SageMaker
    passes MaxPayloadInMB), mini-batches run in passes of at most 4 images."""
    port = _free_port()
    proc = subprocess.run(
        ["docker", "run", "-d", "--rm", "--name", NAME, "-p", f"127.0.0.1:{port}:8080",
         "-e", "SAGEMAKER_MODEL_SERVER_WORKERS=1", "-e", "SERVE_THREADS_PER_WORKER=1",
         "-e", "SAGEMAKER_MAX_PAYLOAD_IN_MB=1", "-e", "SERVE_MAX_IMAGES=4",
         "-e", "SAGEMAKER_BATCH=true", *SLOW_MACHINE, "-v", f"{tiny_artifact}:/opt/ml/model:ro",
         SERVE_IMAGE, "serve"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    try:
        _wait_ready(port)
        yield port
    finally:
        remove_containers(NAME)


def _jsonl_file() -> list[bytes]:
    """The lines of a JSON Lines file of the photos (each ends in \\n), one bad record."""
    lines = [json.dumps({"image": base64.b64encode(p.read_bytes()).decode()}).encode() + b"\n"
             for p in HELD_OUT]
    lines.insert(BAD_AT, BAD_RECORD)
    return lines


def _mini_batches(lines: list[bytes], strategy: str, payload_mb: int) -> list[bytes]:
    """SageMaker's Line split: SingleRecord one line a request; MultiRecord as many whole
    lines as fit in MaxPayloadInMB."""
    if strategy == "SingleRecord":
        return list(lines)
    batches, buffer = [], b""
    for line in lines:
        if buffer and len(buffer + line) > payload_mb * MIB:
            batches.append(buffer)
            buffer = b""
        buffer += line
    return [*batches, buffer]


def _transform(port: int, batches: list[bytes]) -> list[str]:
    """Post each mini-batch; assemble as AssembleWith Line does (a newline after each)."""
    out = b""
    for body in batches:
        status, kind, answer = _request(port, "/invocations", body,
                                        {"Content-Type": JSONL, "Accept": JSONL})
        assert status == 200 and kind.startswith(JSONL), answer[:500]
        out += answer + b"\n"
    return out.decode().splitlines()


def _single(port: int, data: bytes, content_type: str = "image/jpeg") -> dict:
    status, _, answer = _request(port, "/invocations", data, {"Content-Type": content_type})
    assert status == 200, answer[:500]
    [prediction] = json.loads(answer)["predictions"]
    return prediction


def _same(line: dict, reference: dict) -> None:
    assert [p["label"] for p in line["top_k"]] == [p["label"] for p in reference["top_k"]]
    for got, want in zip(line["top_k"], reference["top_k"], strict=True):
        assert abs(got["probability"] - want["probability"]) <= 1e-5


def test_execution_parameters_fit_the_container(server):
    status, kind, body = _request(server, "/execution-parameters")
    assert status == 200 and kind.startswith("application/json")
    # one worker, SAGEMAKER_MAX_PAYLOAD_IN_MB=1: one request at a time, 1 MB a request
    assert json.loads(body) == {"MaxConcurrentTransforms": 1, "BatchStrategy": "SingleRecord",
                                "MaxPayloadInMB": 1}


@pytest.mark.parametrize("strategy", ["MultiRecord", "SingleRecord"])
def test_json_lines_transform_matches_single_image_requests(server, strategy):
    params = json.loads(_request(server, "/execution-parameters")[2])
    lines = _jsonl_file()
    batches = _mini_batches(lines, strategy, params["MaxPayloadInMB"])
    assert len(batches) == (2 if strategy == "MultiRecord" else len(lines))
    output = _transform(server, batches)
    assert len(output) == len(lines)
    photos = list(HELD_OUT)
    for i, text in enumerate(output):
        line = json.loads(text)
        if i == BAD_AT:
            assert line["error"]["code"] == 400 and "not a JPEG" in line["error"]["message"]
            continue
        _same(line, _single(server, photos.pop(0).read_bytes()))


def test_strict_mode_fails_the_mini_batch_with_a_4xx(server):
    batch = b"".join(_jsonl_file()[BAD_AT - 2:BAD_AT + 2])
    status, kind, body = _request(server, "/invocations", batch, {
        "Content-Type": JSONL, "X-Amzn-SageMaker-Custom-Attributes": "strict=true"})
    assert status == 400 and kind.startswith("application/json")
    assert json.loads(body)["message"].startswith("record 3 of this request: ")


def test_one_image_per_object_split_type_none(server):
    """SplitType None: the body is the whole S3 object, a JPEG or a PNG."""
    photo = HELD_OUT[1].read_bytes()
    png = io.BytesIO()
    Image.open(io.BytesIO(photo)).save(png, "PNG")
    labels = [p["label"] for p in _single(server, photo)["top_k"]]
    assert labels
    assert [p["label"] for p in _single(server, png.getvalue(), "image/png")["top_k"]] == labels
    assert _single(server, photo, "application/x-image") == _single(server, photo)


def test_sdk_local_mode_runs_the_transform_offline(server, tiny_artifact, tmp_path):
    """The SageMaker SDK v3's own local transform job (docker compose, its Line split and
    batching, the container's execution parameters) gives the same lines."""
    if not DRIVERS_PYTHON.exists():
        pytest.skip("no .venv-drivers (dev/setup_drivers_venv.sh makes it)")
    if not shutil.which("docker-compose") and subprocess.run(
            ["docker", "compose", "version"], capture_output=True).returncode:
        pytest.skip("SDK local mode needs docker compose (apt-get install docker-compose)")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "photos.jsonl").write_bytes(b"".join(_jsonl_file()[:BAD_AT + 3]))
    env = [arg for pair in ("SERVE_THREADS_PER_WORKER=1", "SAGEMAKER_MODEL_SERVER_WORKERS=1",
                            "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS=600", "SERVE_GRAPH=eager")
           for arg in ("--env", pair)]
    proc = subprocess.run(
        [str(DRIVERS_PYTHON), str(REPO / "local_test" / "sdk_local_transform.py"),
         "--image", SERVE_IMAGE, "--model-dir", str(tiny_artifact), "--input",
         str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--port", str(_free_port()),
         *env], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"batch_strategy": "SingleRecord", "outputs": ["photos.jsonl.out"]}
    output = (tmp_path / "out" / "photos.jsonl.out").read_text().splitlines()
    assert len(output) == BAD_AT + 3
    assert json.loads(output[BAD_AT])["error"]["code"] == 400
    photos = list(HELD_OUT)
    for i, text in enumerate(output):
        if i != BAD_AT:
            _same(json.loads(text), _single(server, photos.pop(0).read_bytes()))
