"""The real multi-model-server, started by ``python -m container_serve`` on a free loopback port
with an artifact written by the real training code, answering real HTTP requests."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import torch
from PIL import Image

from bench.local_server import free_port, stop_session
from container_serve.front import BODY_BUFFER_BYTES, CLIENT_TIMEOUT_S, MAX_ACTIVE
from container_serve.serve import MMS_REQUEST_SLACK
from model_artifact.manifest import MANIFEST_FILE, manifest_sha256
from model_artifact.network import load_artifact
from model_artifact.preprocess import load_image
from tests.conftest import SAMPLE_DATA, training_env

pytestmark = pytest.mark.slow

MAX_BYTES, MAX_IMAGES, MAX_PIXELS = 400_000, 4, 4_000_000
WORKERS = 2
CUSTOM = "X-Amzn-SageMaker-Custom-Attributes"
PHOTOS = sorted((SAMPLE_DATA / "test").glob("*/*.jpg"))


def encode(image: Image.Image, fmt: str, **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


@dataclass
class Reply:
    status: int
    content_type: str
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class Server:
    port: int
    proc: subprocess.Popen
    runtime_dir: Path
    log: Path
    workers_at_start: set[int] = field(default_factory=set)

    def request(self, method: str, path: str, body: bytes | None = None, **headers: str) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request(method, path, body=body, headers={k.replace("_", "-"): v
                                                           for k, v in headers.items()})
            resp = conn.getresponse()
            return Reply(resp.status, resp.getheader("Content-Type", ""), resp.read())
        finally:
            conn.close()

    def invoke(self, body: bytes, content_type: str | None = "image/jpeg", **headers: str) -> Reply:
        if content_type is not None:
            headers["Content_Type"] = content_type
        return self.request("POST", "/invocations", body, **headers)

    def processes(self) -> list[psutil.Process]:
        """MMS and its workers: their command lines name our private runtime directory."""
        mine = []
        for proc in psutil.process_iter(["cmdline"]):
            if any(str(self.runtime_dir) in part for part in proc.info["cmdline"] or []):
                mine.append(proc)
        return mine

    def worker_pids(self) -> set[int]:
        """MMS's Python side: its socket server (java's child) and the workers it forked."""
        return {p.pid for p in self.processes()
                if any("model_service_worker" in part for part in p.info["cmdline"])}

    def socket_server_and_workers(self) -> tuple[int, set[int]]:
        """MMS 1.1.11 starts one Python socket server, which forks one worker per
        connection from java; a worker that dies is forked again while that server lives."""
        pids = self.worker_pids()
        servers = [pid for pid in pids if psutil.Process(pid).ppid() not in pids]
        assert len(servers) == 1, servers
        return servers[0], pids - set(servers)


def run_serve(model_dir: Path, tmp: Path, **env: str) -> tuple[list[str], dict[str, str], Path]:
    port = free_port()
    runtime = tmp / "runtime"
    runtime.mkdir(parents=True, exist_ok=True)
    full_env = {**training_env(), "SERVE_RUNTIME_DIR": str(runtime),
                "SAGEMAKER_MODEL_SERVER_WORKERS": "1", **env}
    cmd = [sys.executable, "-m", "container_serve", "--model-dir", str(model_dir),
           "--port", str(port)]
    return cmd, full_env, runtime


def start_server(model_dir: Path, tmp: Path, good: bytes, **env: str) -> Server:
    cmd, full_env, runtime = run_serve(model_dir, tmp, **env)
    log = tmp / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=full_env, cwd=tmp, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    server = Server(int(cmd[-1]), proc, runtime, log)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # a real classification, not only /ping
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:  # /ping: every configured worker has the model, not only the first one
            if server.invoke(good).status == 200 and server.request("GET", "/ping").status == 200:
                return server
        except OSError:
            pass
        time.sleep(1)
    stop_server(server)
    raise AssertionError(f"server not ready in 300 s:\n{log.read_text()[-3000:]}")


def stop_server(server: Server) -> int:
    """SIGTERM as SageMaker does; whatever is left after a minute is killed."""
    return stop_session(server.proc, server.processes)


@pytest.fixture(scope="module")
def photo() -> bytes:
    return PHOTOS[0].read_bytes()


@pytest.fixture(scope="module")
def server(serve_artifact: Path, tmp_path_factory: pytest.TempPathFactory,
           photo: bytes) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("serve")
    # Pinned as deploy.py --manifest-sha256 pins it: the right hash serves.
    server = start_server(serve_artifact, tmp, photo, SERVE_MAX_REQUEST_BYTES=str(MAX_BYTES),
                          SERVE_MAX_IMAGES=str(MAX_IMAGES), SERVE_MAX_PIXELS=str(MAX_PIXELS),
                          SERVE_MANIFEST_SHA256=manifest_sha256(serve_artifact))
    server.workers_at_start = server.worker_pids()
    assert server.workers_at_start, "no MMS worker found"
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def reference(serve_artifact: Path):
    """Probabilities the way the training code evaluates: its dataset class (model_artifact's
    load_image + the manifest's uint8 pixels), batch normalisation as the engine does it,
    channels_last model in eval mode; softmax of the logits over the manifest's temperature
    (docs/serving-api.md: calibration is on by default)."""
    from container_train.data import ImageListDataset

    model, manifest = load_artifact(serve_artifact)
    model = model.to(memory_format=torch.channels_last)
    pre = manifest.preprocessing
    temperature = manifest.calibration.temperature if manifest.calibration else 1.0

    def probabilities(source: Path | bytes, temperature: float = temperature) -> list[float]:
        if isinstance(source, Path):
            pixels = ImageListDataset([(source, 0)], pre.pixels(), min_side=pre.resize)[0][0]
        else:  # the same pipeline on bytes (variants made in memory)
            pixels = pre.pixels()(load_image(source, min_side=pre.min_side))
        with torch.inference_mode():
            batch = pre.normalize(pixels.unsqueeze(0)).contiguous(
                memory_format=torch.channels_last)
            return torch.softmax(model(batch) / temperature, dim=1)[0].tolist()

    probabilities.class_names = manifest.class_names
    return probabilities


def full_distribution(reply: Reply, n_classes: int) -> list[list[float]]:
    """Served top-k (k = all classes) back to index order, one list per image."""
    assert reply.status == 200, reply.body[:500]
    rows = []
    for prediction in reply.json()["predictions"]:
        top = prediction["top_k"]
        assert len(top) == n_classes
        probs = [0.0] * n_classes
        for entry in top:
            probs[entry["index"]] = entry["probability"]
        rows.append(probs)
    return rows


def check_top_k(reply: Reply, class_names: tuple[str, ...], k: int, images: int = 1) -> None:
    assert reply.status == 200, reply.body[:500]
    assert reply.content_type.startswith("application/json")
    predictions = reply.json()["predictions"]
    assert len(predictions) == images
    for prediction in predictions:
        top = prediction["top_k"]
        assert len(top) == k
        probs = [t["probability"] for t in top]
        assert probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs)
        assert all(class_names[t["index"]] == t["label"] for t in top)


def test_mms_configuration(server: Server) -> None:
    """The knobs reach MMS (private config file) and the worker (its environment)."""
    props = (server.runtime_dir / "mms.properties").read_text()
    assert "default_service_handler=container_serve.handler_service" in props
    # nginx owns the public port; MMS listens on a Unix socket in the runtime dir behind it.
    assert f"listen {server.port} " in (server.runtime_dir / "nginx.conf").read_text()
    mms_log = (server.runtime_dir / "logs" / "mms_log.log").read_text()
    assert f"Inference API bind to: unix:{server.runtime_dir}/mms.sock" in mms_log
    assert "default_response_timeout_seconds=60" in props
    assert "default_workers_per_model=1" in props
    assert f"Maximum Request Size: {MAX_BYTES + MMS_REQUEST_SLACK}" in server.log.read_text()
    worker_env = psutil.Process(min(server.workers_at_start)).environ()
    assert worker_env["SERVE_THREADS_PER_WORKER"] == worker_env["OMP_NUM_THREADS"]
    assert int(worker_env["SERVE_THREADS_PER_WORKER"]) <= max(1, len(os.sched_getaffinity(0)))


def test_ping(server: Server) -> None:
    reply = server.request("GET", "/ping")
    assert reply.status == 200 and b"Healthy" in reply.body


@pytest.mark.parametrize(("fmt", "content_type"),
                         [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp")])
def test_formats(server: Server, reference, fmt: str, content_type: str) -> None:
    body = encode(Image.open(PHOTOS[1]), fmt)
    check_top_k(server.invoke(body, content_type), reference.class_names, 5)


def variants() -> dict[str, bytes]:
    image = Image.open(PHOTOS[2]).convert("RGB")
    rgba = image.convert("RGBA")
    rgba.putalpha(100)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    return {
        "cmyk": encode(image.convert("CMYK"), "JPEG"),
        "gray": encode(image.convert("L"), "PNG"),
        "palette": encode(image.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "rgba": encode(rgba, "PNG"),
        "exif_rotated": encode(image, "JPEG", exif=exif),
    }


@pytest.mark.parametrize("name", sorted(variants()))
def test_modes_sniffed_and_equal_to_reference(server: Server, reference, name: str) -> None:
    body = variants()[name]
    reply = server.invoke(body, "application/octet-stream", **{CUSTOM: "top_k=5"})
    served = full_distribution(reply, 5)[0]
    expected = reference(body)
    assert max(abs(a - b) for a, b in zip(served, expected, strict=True)) < 1e-5


def test_json_batch_equals_single_requests(server: Server, reference) -> None:
    bodies = [p.read_bytes() for p in PHOTOS[:3]]
    payload = json.dumps({"images": [base64.b64encode(b).decode() for b in bodies]}).encode()
    batch = full_distribution(
        server.invoke(payload, "application/json", **{CUSTOM: "top_k=5"}), 5
    )
    assert len(batch) == 3
    for body, row in zip(bodies, batch, strict=True):
        single = full_distribution(server.invoke(body, **{CUSTOM: "top_k=5"}), 5)[0]
        assert max(abs(a - b) for a, b in zip(single, row, strict=True)) < 1e-5
    one = json.dumps({"image": base64.b64encode(bodies[0]).decode()})
    check_top_k(server.invoke(one.encode(), "application/json; charset=utf-8"),
                reference.class_names, 5)


@pytest.mark.parametrize(("attributes", "k"), [("top_k=3", 3), ("a=b; top_k=1", 1),
                                               ("top_k=1000", 5), ("", 5)])
def test_top_k(server: Server, reference, photo: bytes, attributes: str, k: int) -> None:
    check_top_k(server.invoke(photo, **{CUSTOM: attributes}), reference.class_names, k)


def bad_requests() -> dict[str, tuple[bytes, dict[str, str], int, str]]:
    photo = PHOTOS[0].read_bytes()
    b64 = base64.b64encode(photo).decode()
    bomb = encode(Image.new("L", (4000, 2000)), "PNG")  # 8 Mpx in a few KB
    return {
        "csv": (b"1,2", {"Content_Type": "text/csv"}, 415, "text/csv"),
        "form": (b"a=b", {"Content_Type": "application/x-www-form-urlencoded"}, 415, "form"),
        # Invalid form encoding: MMS's own decoder answered these with a 500 before nginx.
        "form_invalid": (b"a=%zz&%", {"Content_Type": "application/x-www-form-urlencoded"}, 415,
                         "form"),
        "multipart_junk": (b"junk", {"Content_Type": "Multipart/Form-Data; boundary=x"}, 415,
                           "Multipart/Form-Data"),
        "accept_csv": (photo, {"Content_Type": "image/jpeg", "Accept": "text/csv"}, 406,
                       "text/csv"),
        "empty": (b"", {"Content_Type": "image/jpeg"}, 400, "empty"),
        "garbage": (b"hello" * 100, {"Content_Type": "application/octet-stream"}, 400,
                    "not a JPEG"),
        "truncated": (photo[: len(photo) // 3], {"Content_Type": "image/jpeg"}, 400,
                      "corrupt"),
        "bad_json": (b'{"images": [', {"Content_Type": "application/json"}, 400, "JSON"),
        "not_utf8": (b'{"image": "\xff"}', {"Content_Type": "application/json"}, 400, "UTF-8"),
        "bad_base64": (b'{"image": "%%%"}', {"Content_Type": "application/json"}, 400,
                       "base64"),
        "bad_top_k": (photo, {"Content_Type": "image/jpeg", CUSTOM: "top_k=many"}, 400,
                      "top_k"),
        "too_many_bytes": (photo * (MAX_BYTES // len(photo) + 1), {"Content_Type": "image/jpeg"},
                           413, f"limit is {MAX_BYTES}"),
        "too_many_images": (json.dumps({"images": [b64] * (MAX_IMAGES + 1)}).encode(),
                            {"Content_Type": "application/json"}, 413, "images"),
        "too_many_pixels": (bomb, {"Content_Type": "image/png"}, 413, "pixels"),
    }


@pytest.mark.parametrize("name", sorted(bad_requests()))
def test_error_then_good_request(server: Server, photo: bytes, name: str) -> None:
    body, headers, status, fragment = bad_requests()[name]
    reply = server.request("POST", "/invocations", body, **headers)
    assert reply.status == status, reply.body[:500]
    assert reply.content_type.startswith("application/json")
    text = reply.body.decode()
    assert "Traceback" not in text and "\n" not in text.strip()
    doc = reply.json()
    assert doc["code"] == status and fragment in doc["message"], doc
    assert server.invoke(photo).status == 200
    assert server.worker_pids() == server.workers_at_start  # same worker, never restarted


def test_above_mms_limit_is_a_json_413_from_nginx(server: Server, photo: bytes) -> None:
    body = b"\xff\xd8\xff" + b"\0" * (MAX_BYTES + MMS_REQUEST_SLACK + 10)
    reply = server.invoke(body)
    assert reply.status == 413
    assert reply.json()["code"] == 413 and f"limit is {MAX_BYTES}" in reply.json()["message"]
    assert server.invoke(photo).status == 200
    assert server.worker_pids() == server.workers_at_start


def test_parity_with_training_evaluation(server: Server, reference) -> None:
    for path in PHOTOS[:: max(1, len(PHOTOS) // 4)][:4]:
        served = full_distribution(server.invoke(path.read_bytes(), **{CUSTOM: "top_k=5"}), 5)[0]
        expected = reference(path)
        assert max(abs(a - b) for a, b in zip(served, expected, strict=True)) < 1e-5, path


def test_abstain_fields_appear_and_disappear_with_the_attribute(server: Server,
                                                               photo: bytes) -> None:
    """The tiny artifact has a novelty detector: each image answers with abstain and its score;
    CustomAttributes abstain=false gives the answer without them (top_k unchanged)."""
    default = server.invoke(photo, **{CUSTOM: "top_k=3"}).json()["predictions"][0]
    assert isinstance(default["abstain"], bool)
    assert default["abstain"] is (default["novelty_score"] > default["novelty_threshold"])
    plain = server.invoke(photo, **{CUSTOM: "top_k=3; abstain=false"}).json()["predictions"][0]
    assert plain == {"top_k": default["top_k"]}
    refused = server.invoke(photo, **{CUSTOM: "abstain=maybe"})
    assert refused.status == 400 and b"abstain must be true or false" in refused.body


def test_calibration_off_serves_the_raw_softmax(serve_artifact: Path, server: Server, reference,
                                                 tmp_path: Path) -> None:
    """SERVE_CALIBRATION=false: softmax of the logits (T = 1), not the calibrated answer."""
    temperature = load_artifact(serve_artifact)[1].calibration.temperature
    assert abs(temperature - 1.0) > 1e-3  # else this test could not tell them apart
    path = PHOTOS[0]
    calibrated = full_distribution(server.invoke(path.read_bytes(), **{CUSTOM: "top_k=5"}), 5)[0]
    raw_server = start_server(serve_artifact, tmp_path, path.read_bytes(),
                              SERVE_CALIBRATION="false")
    try:
        raw = full_distribution(raw_server.invoke(path.read_bytes(), **{CUSTOM: "top_k=5"}),
                                5)[0]
    finally:
        stop_server(raw_server)
    assert max(abs(a - b) for a, b in zip(raw, reference(path, 1.0), strict=True)) < 1e-5
    assert max(abs(a - b) for a, b in zip(calibrated, raw, strict=True)) > 1e-3


def _nginx_workers(server: Server) -> list[psutil.Process]:
    masters = [p for p in server.processes() if "nginx" in " ".join(p.info["cmdline"] or [])]
    assert len(masters) == 1, [p.info["cmdline"] for p in masters]
    return masters[0].children()


def _open_paths(pid: int) -> list[str]:
    """What the process's file descriptors point at, deleted files too (nginx unlinks its
    temp files at once; psutil's open_files leaves those out)."""
    paths = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            paths.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return paths


def _stalled_upload(port: int, declared: int, sent: bytes) -> socket.socket:
    """A POST that declares ``declared`` body bytes and sends only ``sent``, then waits."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                 b"Content-Length: %d\r\n\r\n" % declared + sent)
    return sock


def _answer(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_large_bodies_are_spooled_to_disk_not_held_in_memory(server: Server) -> None:
    """Before: client_body_buffer_size was the whole payload limit, so every connection could
    hold ~7 MiB of RAM in nginx (1,024 of them: 7.4 GiB). Now a body above BODY_BUFFER_BYTES
    goes to a temp file in the runtime dir while it arrives."""
    body_dir = server.runtime_dir / "nginx-body"
    with _stalled_upload(server.port, MAX_BYTES, b"\xff" * (2 * BODY_BUFFER_BYTES)):
        deadline, spooled = time.monotonic() + 10, []
        while not spooled and time.monotonic() < deadline:
            time.sleep(0.2)
            spooled = [path for w in _nginx_workers(server) for path in _open_paths(w.pid)
                       if path.startswith(str(body_dir))]
        assert spooled, "nginx holds the partial body in memory, not in a temp file"
    small = encode(Image.open(PHOTOS[1]).resize((64, 64)), "JPEG")
    assert len(small) < BODY_BUFFER_BYTES and server.invoke(small).status == 200


def test_a_stalled_body_is_cut_off_after_the_client_timeout(server: Server) -> None:
    """nginx's default waits 60 s per read; a client that stops sending holds its connection
    (and its spooled body) that long. Now CLIENT_TIMEOUT_S."""
    start = time.monotonic()
    with _stalled_upload(server.port, 10_000, b"\xff\xd8") as sock:
        sock.settimeout(CLIENT_TIMEOUT_S + 20)
        try:
            _answer(sock)
        except ConnectionResetError:
            pass
    seconds = time.monotonic() - start
    print(f"stalled body cut off after {seconds:.1f} s")
    assert CLIENT_TIMEOUT_S - 1 <= seconds <= CLIENT_TIMEOUT_S + 5, seconds


def test_requests_in_progress_are_bounded_and_ping_still_answers(server: Server,
                                                                 photo: bytes) -> None:
    """MAX_ACTIVE requests whose bodies are arriving occupy nginx; one more gets a JSON 503
    without its body being read, while /ping (not limited: busy is not dead) stays 200."""
    stalled = [_stalled_upload(server.port, 10_000, b"\xff\xd8") for _ in range(MAX_ACTIVE)]
    try:
        time.sleep(1)  # nginx has read every header
        reply = server.invoke(photo)
        assert reply.status == 503, reply
        assert f"more than {MAX_ACTIVE} requests in progress" in reply.json()["message"]
        assert server.request("GET", "/ping").status == 200
    finally:
        for sock in stalled:
            sock.close()
    time.sleep(0.5)
    assert server.invoke(photo).status == 200


def test_only_nginx_listens_on_tcp(server: Server) -> None:
    """MMS's inference and management APIs are on Unix sockets in the runtime dir: the
    management API (register, scale, unregister models) must never be reachable over TCP."""
    ours = {p.pid: p for top in server.processes() for p in [top, *top.children(True)]}
    listening = {(p.name(), c.laddr.ip, c.laddr.port) for p in ours.values()
                 for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN}
    ports = {port for _, _, port in listening}
    assert ports == {server.port}, listening
    assert all(name.startswith("nginx") for name, _, _ in listening), listening
    props = (server.runtime_dir / "mms.properties").read_text()
    mms_log = (server.runtime_dir / "logs" / "mms_log.log").read_text()
    assert f"Management API bind to: unix:{server.runtime_dir}/" in mms_log, props


def _ping_until_503(server: Server, fragment: str, within: float = 30
                    ) -> tuple[Reply | None, float]:
    """The first /ping 503 whose message has ``fragment`` (or the last reply), and when."""
    start, reply = time.monotonic(), None
    while time.monotonic() < start + within:
        reply = server.request("GET", "/ping")
        if reply.status == 503 and fragment in reply.json()["message"]:
            break
        time.sleep(0.1)
    return reply, time.monotonic() - start


def test_ping_is_503_when_the_workers_are_dead(server: Server) -> None:
    """MMS's own /ping says 200 {"status": "Unhealthy"} when its workers are dead (and MMS
    1.1.11 does not restart a killed worker: it keeps reconnecting to the dead socket), so
    SageMaker would keep a dead endpoint in service. Ours says 503. Runs second to last: it
    kills the shared server's workers."""
    pids = server.worker_pids()
    assert server.request("GET", "/ping").status == 200
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    deadline, reply = time.monotonic() + 30, None
    while time.monotonic() < deadline:
        reply = server.request("GET", "/ping")
        if reply.status == 503:
            break
        time.sleep(0.1)
    assert reply is not None and reply.status == 503, reply
    assert reply.content_type.startswith("application/json")
    assert reply.json()["code"] == 503 and "no worker has the model" in reply.json()["message"]


def test_sigterm_stops_server_and_workers(server: Server) -> None:
    """Runs last in this module: stops the shared server."""
    assert server.processes()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=60) == 0
    deadline = time.monotonic() + 15
    while server.processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not server.processes(), [p.info["cmdline"] for p in server.processes()]
    assert "serve: stopped" in server.log.read_text()


def _ping_until_200(server: Server, within: float = 30) -> float:
    start = time.monotonic()
    while server.request("GET", "/ping").status != 200:
        assert time.monotonic() < start + within, "no 200 from /ping"
        time.sleep(0.1)
    return time.monotonic() - start


def test_ping_is_503_while_fewer_workers_serve_than_configured(
        serve_artifact: Path, tmp_path: Path, photo: bytes) -> None:
    """MMS's own /ping says 200 {"status": "Partial Healthy"} with one of two workers dead and
    200 {"status": "Unhealthy"} with both dead. A killed worker is forked again by MMS's Python
    socket server, but once that server is gone nothing replaces a worker, and the endpoint
    would stay in service at half capacity, or none. Ours says 503 whenever fewer workers than
    configured have the model. Its own server: two workers, eager graph (quicker to load), a
    long MMS time-out so that a slow load on a busy machine is not killed."""
    server = start_server(serve_artifact, tmp_path, photo, SERVE_GRAPH="eager",
                          SAGEMAKER_MODEL_SERVER_WORKERS=str(WORKERS),
                          SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS="600")
    try:
        _kill_workers_one_by_one(server)
    finally:
        stop_server(server)


def _kill_workers_one_by_one(server: Server) -> None:
    socket_server, workers = server.socket_server_and_workers()
    assert len(workers) == WORKERS and server.request("GET", "/ping").status == 200
    # 1. A worker dies while the socket server lives: MMS forks a new one (measured).
    os.kill(min(workers), signal.SIGKILL)
    reply, to_503 = _ping_until_503(server, "fewer workers have the model loaded", within=5)
    back = _ping_until_200(server)
    _, replaced = server.socket_server_and_workers()
    seen = "503" if reply is not None and reply.status == 503 else "no 503 seen"
    print(f"worker killed: /ping {seen} after {to_503:.2f} s, 200 again {back:.2f} s later "
          f"(worker forked again by MMS)")
    assert len(replaced) == WORKERS and min(workers) not in replaced
    # 2. The socket server is gone, then a worker dies: nothing replaces it, /ping stays 503.
    os.kill(socket_server, signal.SIGKILL)
    time.sleep(1)
    assert server.request("GET", "/ping").status == 200  # both workers still serve
    doomed, survivor = sorted(replaced)
    os.kill(doomed, signal.SIGKILL)
    reply, seconds = _ping_until_503(server, "fewer workers have the model loaded")
    print(f"worker killed, no socket server: /ping 503 after {seconds:.2f} s")
    assert reply is not None and reply.status == 503, reply
    time.sleep(5)
    assert server.request("GET", "/ping").status == 503  # no replacement came
    assert server.worker_pids() == {survivor}
    # 3. The last worker dies.
    os.kill(survivor, signal.SIGKILL)
    reply, _ = _ping_until_503(server, "no worker has the model")
    assert reply is not None and reply.status == 503, reply


# --- artifacts that must stop `serve` before MMS opens a port ---------------------------------


def broken_artifact(source: Path, dest: Path, kind: str) -> Path:
    dest.mkdir()
    manifest = json.loads((source / MANIFEST_FILE).read_text())
    weights = source / manifest["weights_file"]
    (dest / weights.name).symlink_to(weights)
    if kind == "missing_manifest":
        return dest
    if kind == "invalid_json":
        (dest / MANIFEST_FILE).write_text("{not json")
        return dest
    if kind == "invalid_field":
        manifest["class_names"] = []
    elif kind == "sha_mismatch":
        manifest["weights_sha256"] = "0" * 64
    elif kind == "shape_mismatch":  # one class more than the weights have
        manifest["class_names"] = [*manifest["class_names"], "extra"]
        manifest["num_classes"] = len(manifest["class_names"])
    elif kind == "missing_weights":
        (dest / weights.name).unlink()
    (dest / MANIFEST_FILE).write_text(json.dumps(manifest))
    return dest


@pytest.mark.parametrize(("kind", "fragments"), [
    ("missing_manifest", ["manifest.json", "not found"]),
    ("invalid_json", ["manifest.json", "not valid JSON"]),
    ("invalid_field", ["manifest.json", "class_names"]),
    ("missing_weights", ["model.pt", "missing"]),
    ("sha_mismatch", ["model.pt", "sha256 does not match"]),
    ("shape_mismatch", ["model.pt", "do not match the manifest", "6 classes"]),
])
def test_broken_artifact_exits_before_the_port_opens(serve_artifact: Path, tmp_path: Path,
                                                     kind: str, fragments: list[str]) -> None:
    model_dir = broken_artifact(serve_artifact, tmp_path / "model", kind)
    cmd, env, runtime = run_serve(model_dir, tmp_path)
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=180, start_new_session=True)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    for fragment in fragments:
        assert fragment in output, output
    assert "Traceback" not in output
    # MMS starts on its private socket while the check runs; its workers wait for the check
    # and never load the model.
    assert "nginx listens" not in output and not (runtime / "nginx.conf").exists()
    assert "Model model loaded io_fd" not in output  # a worker loaded it (MMS logs this)
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", int(cmd[-1]))) != 0  # nothing listens
    leftovers = Server(int(cmd[-1]), None, runtime, tmp_path / "unused").processes()
    assert not leftovers, [p.info["cmdline"] for p in leftovers]
    shutil.rmtree(runtime, ignore_errors=True)


def test_a_pinned_manifest_hash_that_differs_stops_serve_before_anything_starts(
        serve_artifact: Path, tmp_path: Path) -> None:
    """SERVE_MANIFEST_SHA256 (deploy.py --manifest-sha256) pins the artifact from outside the
    archive: another manifest.json (here: the right one, pinned to another hash) is refused
    with one line, before MMS starts or a port opens."""
    cmd, env, runtime = run_serve(serve_artifact, tmp_path,
                                  SERVE_MANIFEST_SHA256="0" * 64)
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=180, start_new_session=True)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    (line,) = [x for x in output.splitlines() if "SERVE_MANIFEST_SHA256" in x]
    assert f"is not the deployed SERVE_MANIFEST_SHA256={'0' * 64}" in line, output
    assert "starting MMS" not in output and "Traceback" not in output, output
    assert not (runtime / "nginx.conf").exists()


def test_a_stale_check_file_in_a_reused_runtime_dir_does_not_pass_a_broken_artifact(
        serve_artifact: Path, tmp_path: Path) -> None:
    model_dir = broken_artifact(serve_artifact, tmp_path / "model", "sha_mismatch")
    cmd, env, runtime = run_serve(model_dir, tmp_path)
    (runtime / "artifact-checked").touch()  # left by an earlier, good start
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=180, start_new_session=True)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "sha256 does not match" in output, output
    assert "Model model loaded io_fd" not in output and "nginx listens" not in output


def test_container_mode_reads_sagemaker_base_dir(tmp_path: Path) -> None:
    """`serve` with no --model-dir (as SageMaker runs it) reads $SAGEMAKER_BASE_DIR/model."""
    (tmp_path / "model").mkdir()
    env = {**training_env(), "SAGEMAKER_BASE_DIR": str(tmp_path),
           "SERVE_RUNTIME_DIR": str(tmp_path / "runtime")}
    proc = subprocess.run([sys.executable, "-m", "container_serve", "serve"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1
    assert f"{tmp_path}/model/manifest.json: not found" in proc.stderr


def test_port_in_use_exits_non_zero_without_orphans(serve_artifact: Path, tmp_path: Path) -> None:
    """MMS starts its workers, then fails to bind: serve exits 1 and ends those workers."""
    cmd, env, runtime = run_serve(serve_artifact, tmp_path)
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("0.0.0.0", int(cmd[-1])))
        blocker.listen()
        proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=300, start_new_session=True)
    assert proc.returncode == 1
    assert "Address already in use" in proc.stdout + proc.stderr
    leftovers = Server(int(cmd[-1]), None, runtime, tmp_path / "unused").processes()
    assert not leftovers, [p.info["cmdline"] for p in leftovers]
