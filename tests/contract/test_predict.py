"""predict.py: the InvokeEndpoint call (content type, custom attributes, body bytes) and the
same request to a local server, against the serving API's response format."""

from __future__ import annotations

import http.server
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from drivers import predict
from tests.contract.conftest import REGION

SAMPLES = Path(__file__).resolve().parents[2] / "sample_data" / "photos5"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24
RESPONSE = {"predictions": [{"top_k": [
    {"label": "tabby_cat", "index": 3, "probability": 0.91},
    {"label": "golden_retriever", "index": 1, "probability": 0.06},
]}]}


@pytest.fixture
def jpeg() -> Path:
    found = sorted(SAMPLES.glob("test/*/*.jpg"))
    assert found, "sample_data/photos5 is missing"
    return found[0]


def test_invoke_endpoint_sends_the_file_bytes_with_its_type(run_driver, jpeg: Path,
                                                            tmp_path: Path):
    png = tmp_path / "picture.dat"  # the type comes from the bytes, not the name
    png.write_bytes(PNG)
    bodies = iter([RESPONSE, RESPONSE])
    responses = {"InvokeEndpoint": lambda params: {
        "Body": io.BytesIO(json.dumps(next(bodies)).encode()), "ContentType": "application/json"}}
    result = run_driver(predict, ["--region", REGION, "--endpoint", "ep-1", "--top-k", "2",
                                  str(jpeg), str(png)], responses)
    assert result.rc == 0, result.err
    calls = [c.params for c in result.recorder.calls]
    assert [(c["ContentType"], c["Body"]) for c in calls] == [
        ("image/jpeg", jpeg.read_bytes()), ("image/png", PNG)]
    for call in calls:
        assert call["EndpointName"] == "ep-1"
        assert call["CustomAttributes"] == "top_k=2"
        assert call["Accept"] == "application/json"
    assert "tabby_cat" in result.out and "0.9100" in result.out
    assert [c.service for c in result.recorder.calls] == ["sagemaker-runtime"] * 2


def test_dry_run_prints_the_invoke_request(run_driver, jpeg: Path):
    result = run_driver(predict, ["--region", REGION, "--endpoint", "ep-1", "--dry-run",
                                  "--content-type", "application/x-image", str(jpeg)])
    [request] = result.requests()
    assert request["operation"] == "InvokeEndpoint"
    assert request["params"]["ContentType"] == "application/x-image"
    assert request["params"]["Body"]["bytes"] == jpeg.stat().st_size


def test_an_aws_refusal_is_one_line_as_in_every_driver(run_driver, jpeg: Path):
    # docs/drivers.md, exit codes: "failed: AWS said CODE: MESSAGE", exit 1
    refused = {"__status__": 400, "Error": {"Code": "ValidationException",
                                            "Message": "Endpoint ep-9 not found."}}
    result = run_driver(predict, ["--region", REGION, "--endpoint", "ep-9", str(jpeg)],
                        {"InvokeEndpoint": refused})
    assert result.rc == 1
    assert result.err == "failed: AWS said ValidationException: Endpoint ep-9 not found.\n"


def test_an_unreadable_file_is_a_usage_error(tmp_path: Path, capsys):
    rc = predict.main(["--url", "http://127.0.0.1:9", str(tmp_path / "missing.jpg")])
    assert rc == 2
    assert capsys.readouterr().err.startswith(f"error: cannot read {tmp_path / 'missing.jpg'}")


class _Server(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Server.seen.append((self.path, dict(self.headers), body))
        payload = json.dumps(RESPONSE).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def local_server() -> Iterator[str]:
    _Server.seen = []
    server = http.server.HTTPServer(("127.0.0.1", 0), _Server)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_local_url_gets_invocations_with_top_k_header(local_server: str, jpeg: Path, capsys):
    rc = predict.main(["--url", local_server, "--top-k", "3", str(jpeg)])
    out = capsys.readouterr().out
    assert rc == 0
    [(path, headers, body)] = _Server.seen
    assert path == "/invocations"
    headers = {k.lower(): v for k, v in headers.items()}
    assert headers["content-type"] == "image/jpeg"
    assert headers["x-amzn-sagemaker-custom-attributes"] == "top_k=3"
    assert body == jpeg.read_bytes()
    assert "tabby_cat" in out and "golden_retriever" in out


def test_local_url_error_is_reported(jpeg: Path, capsys):
    rc = predict.main(["--url", "http://127.0.0.1:9", str(jpeg)])
    assert rc == 1 and "cannot reach" in capsys.readouterr().err


@pytest.mark.parametrize("data, name, expected", [
    (b"\xff\xd8\xff\xe0", "x.bin", "image/jpeg"),
    (PNG, "x.jpg", "image/png"),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "x", "image/webp"),
    (b"GIF89a", "x", "image/gif"),
    (b"????", "photo.jpeg", "image/jpeg"),
    (b"????", "noext", "application/octet-stream"),
])
def test_content_type_from_bytes_then_name(data: bytes, name: str, expected: str):
    assert predict.content_type_of(Path(name), data) == expected
