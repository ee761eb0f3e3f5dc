"""Hostile requests against the real server: every answer must be what docs/serving-api.md says.

Sends ``--requests`` hostile requests (default 2,000), interleaved with valid ones (one in
``--valid-every``), to the serving image (``docker run IMAGE serve``, the default) or to a host
multi-model-server (``--host-mms``: ``python -m container_serve``), both started here on a free
loopback port with ``--model-dir`` mounted/served, or to one already running (``--port``).

Hostile: truncated, bit-flipped, overwritten and zero-length JPEG/PNG/WebP/GIF; random bytes
(with and without a format's magic number); decompression bombs (headers claiming 20000x20000,
and a real 1-bit PNG of 20000x20000 zeros); extreme aspect ratios (1xN); multi-frame GIF/WebP;
16-bit, palette, LA and CMYK images; wrong, odd and missing content types; bad Accept and
top_k; invalid JSON (truncated, non-UTF-8, nested 100,000 deep, wrong shapes), invalid base64;
bodies over the payload limit (answered by the handler, and a few over the nginx front's
limit); batches over the image limit and batches with one bad image; wrong methods and paths.

The oracle decides what the server *should* answer from the request alone, following the
documented order of checks; images are decoded in-process with
``model_artifact.preprocess.load_image`` (a bit flip that still decodes must get a 200), and the
expected probabilities come from ``model_artifact`` once per distinct image. Targets: no 5xx, no
worker restart (same worker PIDs, no restart lines in MMS's log), every refusal the documented
4xx with a one-line JSON reason, every 200 equal to the reference (same top-1, probabilities
within 1e-4).

    .venv/bin/python -m bench.fuzz_serve --model-dir DIR                 # serving image
    .venv/bin/python -m bench.fuzz_serve --model-dir DIR --host-mms      # host MMS
    .venv/bin/python -m bench.fuzz_serve --model-dir DIR --requests 200 --seed 1

Only 127.0.0.1 is ever a target. Exit 0 when every target is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import http.client
import io
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.local_server import free_port, stop_session  # noqa: E402
from container_serve.serve import MMS_REQUEST_SLACK  # noqa: E402

SAMPLE_PHOTOS = sorted((REPO / "sample_data" / "photos5" / "test").glob("*/*.jpg"))
SERVE_IMAGE = os.environ.get("SERVE_IMAGE", "sagemaker-resnet50-serve:latest")
HOST = "127.0.0.1"  # the only address this script ever connects to
CUSTOM = "X-Amzn-SageMaker-Custom-Attributes"
# Lines MMS writes when a backend worker dies or is restarted.
RESTART_PATTERNS = re.compile(
    r"Backend worker process die|worker process died|Worker disconnected|Retry worker|"
    r"Backend worker monitoring thread interrupted|Load model failed|OutOfMemory|Killed",
    re.IGNORECASE,
)
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "application/x-image",
               "application/octet-stream")
JSON_TYPE = "application/json"
MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"),
         (b"GIF89a", "GIF"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP"))


# --- the server under test ----------------------------------------------------------------------


@dataclass
class Limits:
    max_bytes: int = 6_553_500
    max_images: int = 16
    max_pixels: int = 40_000_000

    def env(self) -> dict[str, str]:
        return {"SERVE_MAX_REQUEST_BYTES": str(self.max_bytes),
                "SERVE_MAX_IMAGES": str(self.max_images),
                "SERVE_MAX_PIXELS": str(self.max_pixels)}


@dataclass
class Reply:
    status: int  # 0: no HTTP answer (connection error), see ``error``
    content_type: str = ""
    body: bytes = b""
    error: str = ""
    seconds: float = 0.0


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Target:
    """A server on 127.0.0.1:port; subclasses know how to find its workers and logs."""

    kind = "external"

    def __init__(self, port: int) -> None:
        self.port = port

    def request(self, method: str, path: str, body: bytes | None,
                headers: list[tuple[str, str | bytes]], timeout: float = 120) -> Reply:
        start = time.monotonic()
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for name, value in headers:
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            return Reply(resp.status, resp.getheader("Content-Type", ""), resp.read(),
                         seconds=time.monotonic() - start)
        except (OSError, http.client.HTTPException) as exc:
            return Reply(0, error=f"{type(exc).__name__}: {exc}", seconds=time.monotonic() - start)
        finally:
            conn.close()

    def invoke(self, body: bytes, content_type: str = "image/jpeg") -> Reply:
        return self.request("POST", "/invocations", body, [("Content-Type", content_type)])

    def worker_pids(self) -> set[int]:
        return set()

    def logs(self) -> str:
        return ""

    def stop(self) -> None:
        pass

    def wait_ready(self, good: bytes, timeout: float = 300) -> None:
        """Wait for a real classification (it proves more than /ping's 200)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"server exited:\n{self.logs()[-3000:]}")
            reply = self.invoke(good)
            if reply.status == 200:
                return
            last = reply.error or f"{reply.status} {reply.body[:200]!r}"
            time.sleep(1)
        raise RuntimeError(f"server not ready in {timeout} s ({last}):\n{self.logs()[-3000:]}")

    def alive(self) -> bool:
        return True


class HostMMS(Target):
    """``python -m container_serve --model-dir DIR --port N`` with a private runtime dir."""

    kind = "host-mms"

    def __init__(self, model_dir: Path, env: dict[str, str], workers: int | None = 1) -> None:
        super().__init__(free_port())
        self.tmp = Path(tempfile.mkdtemp(prefix="fuzz-serve-"))
        self.runtime = self.tmp / "runtime"
        self.runtime.mkdir()
        self.log_path = self.tmp / "serve.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_"))}
        full_env.update({"PYTHONPATH": str(REPO), "SERVE_RUNTIME_DIR": str(self.runtime), **env})
        if workers:  # else serve's default: one per CPU
            full_env["SAGEMAKER_MODEL_SERVER_WORKERS"] = str(workers)
        cmd = [sys.executable, "-m", "container_serve", "--model-dir", str(model_dir),
               "--port", str(self.port)]
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(cmd, env=full_env, cwd=self.tmp, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _processes(self) -> list[Any]:
        import psutil

        mine = []
        for proc in psutil.process_iter(["cmdline"]):
            if any(str(self.runtime) in part for part in proc.info["cmdline"] or []):
                mine.append(proc)
        return mine

    def worker_pids(self) -> set[int]:
        return {p.pid for p in self._processes()
                if any("model_service_worker" in part for part in p.info["cmdline"])}

    def logs(self) -> str:
        parts = [self.log_path.read_text(errors="replace")] if self.log_path.exists() else []
        for path in sorted((self.runtime / "logs").glob("*.log")):
            parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def stop(self) -> None:
        stop_session(self.proc, self._processes)
        shutil.rmtree(self.tmp, ignore_errors=True)


class DockerServe(Target):
    """``docker run IMAGE serve`` with the model dir at /opt/ml/model, published on loopback."""

    kind = "docker"

    def __init__(self, image: str, model_dir: Path, env: dict[str, str],
                 workers: int | None = None, memory: str | None = None) -> None:
        super().__init__(free_port())
        self.name = f"fuzz-serve-{uuid.uuid4().hex[:8]}"
        cmd = ["docker", "run", "-d", "--rm", "--name", self.name,
               "-p", f"{HOST}:{self.port}:8080",
               "-v", f"{Path(model_dir).resolve()}:/opt/ml/model:ro"]
        if memory:  # a runaway worker is OOM-killed inside the container, not on the host
            cmd += ["--memory", memory, "--memory-swap", memory]
        if workers:
            cmd += ["-e", f"SAGEMAKER_MODEL_SERVER_WORKERS={workers}"]
        for key, value in env.items():
            cmd += ["-e", f"{key}={value}"]
        proc = subprocess.run([*cmd, image, "serve"], capture_output=True, text=True,
                              timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"docker run failed: {proc.stderr.strip()}")
        self._logs_at_stop = ""

    def alive(self) -> bool:
        proc = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", self.name],
                              capture_output=True, text=True, timeout=60)
        return proc.stdout.strip() == "true"

    def worker_pids(self) -> set[int]:
        """Host PIDs (``docker top``) of the container's MMS workers."""
        proc = subprocess.run(["docker", "top", self.name, "-eo", "pid,args"],
                              capture_output=True, text=True, timeout=60)
        return {int(line.split()[0]) for line in proc.stdout.splitlines()[1:]
                if "model_service_worker" in line}

    def logs(self) -> str:
        proc = subprocess.run(["docker", "logs", self.name], capture_output=True, text=True,
                              timeout=120, errors="replace")
        return (proc.stdout + proc.stderr) or self._logs_at_stop

    def stop(self) -> None:
        self._logs_at_stop = self.logs()
        subprocess.run(["docker", "stop", "-t", "30", self.name], capture_output=True,
                       timeout=90)
        subprocess.run(["docker", "rm", "-f", self.name], capture_output=True, timeout=60)


def start_target(args: argparse.Namespace, limits: Limits, good: bytes) -> Target:
    env = {**limits.env(), **dict(kv.split("=", 1) for kv in args.env)}
    if args.port:
        target: Target = Target(args.port)
    elif args.host_mms:
        target = HostMMS(args.model_dir, env, workers=args.workers)
    else:
        target = DockerServe(args.image, args.model_dir, env, workers=args.workers,
                             memory=args.memory or None)
    try:
        target.wait_ready(good, timeout=args.ready_timeout)
    except BaseException:
        target.stop()
        raise
    return target


# --- images ---------------------------------------------------------------------------------


def encode(image: Any, fmt: str, **save: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int, height: int, real: bool) -> bytes:
    """1-bit grayscale PNG. real: the full zero image (20000x20000: ~50 KB for 400 Mpx);
    otherwise only a header that claims the size, with a tiny (wrong) data stream."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    if real:
        row = b"\0" * (1 + (width + 7) // 8)
        comp = zlib.compressobj(9)
        data = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    else:
        data = zlib.compress(b"\0" * 64)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", data)
            + _png_chunk(b"IEND", b""))


def patch_jpeg_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The SOF marker rewritten to claim width x height."""
    i = 2
    while i + 4 < len(jpeg):
        if jpeg[i] != 0xFF:
            break
        marker, length = jpeg[i + 1], struct.unpack(">H", jpeg[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            return jpeg[:i + 5] + struct.pack(">HH", height, width) + jpeg[i + 9:]
        i += 2 + length
    raise ValueError("no SOF marker")


def build_pool(photos: list[Path]) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(valid images by name, bombs by name): made once, in memory."""
    from PIL import Image

    valid: dict[str, bytes] = {}
    for i, path in enumerate(photos[:6]):
        valid[f"photo{i}.jpg"] = path.read_bytes()
    base = Image.open(photos[0]).convert("RGB")
    small = base.copy()
    small.thumbnail((160, 160))
    frames = [Image.open(p).convert("RGB").resize(small.size) for p in photos[1:4]]
    rgba = small.convert("RGBA")
    rgba.putalpha(120)
    exif = Image.Exif()
    exif[0x0112] = 6
    i16 = small.convert("L").point(lambda v: v * 200).convert("I;16")
    palette_t = small.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    palette_t.info["transparency"] = 0
    valid.update({
        "rgb.png": encode(small, "PNG"),
        "lossy.webp": encode(small, "WEBP", quality=80),
        "lossless.webp": encode(small, "WEBP", lossless=True),
        "multi.gif": encode(frames[0], "GIF", save_all=True, append_images=frames[1:],
                            duration=100),
        "multi.webp": encode(frames[0], "WEBP", save_all=True, append_images=frames[1:],
                             duration=100),
        "16bit.png": encode(i16, "PNG"),
        "palette.png": encode(small.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "palette_trns.png": encode(palette_t, "PNG"),
        "la.png": encode(small.convert("LA"), "PNG"),
        "rgba.png": encode(rgba, "PNG"),
        "cmyk.jpg": encode(small.convert("CMYK"), "JPEG"),
        "gray.jpg": encode(small.convert("L"), "JPEG"),
        "progressive.jpg": encode(small, "JPEG", progressive=True, quality=90),
        "exif_rotated.jpg": encode(small, "JPEG", exif=exif),
        "rgb.bmp": encode(small, "BMP"),
        "rgb.tiff": encode(small, "TIFF"),
        "1x1.png": encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"),
        "wide_4x1.png": encode(small.resize((400, 100)), "PNG"),
    })
    jpeg = valid["progressive.jpg"]
    gif = bytearray(valid["multi.gif"])
    gif[6:10] = struct.pack("<HH", 20000, 20000)  # logical screen
    webp_big = encode(Image.new("RGB", (16, 16)), "WEBP", lossless=True)
    bombs = {
        "png_header_20000.png": png_bomb(20000, 20000, real=False),
        "png_real_20000.png": png_bomb(20000, 20000, real=True),
        "jpeg_sof_20000.jpg": patch_jpeg_size(encode(small, "JPEG"), 20000, 20000),
        "jpeg_progressive_20000.jpg": patch_jpeg_size(jpeg, 20000, 20000),
        "gif_screen_20000.gif": bytes(gif),
        "bmp_20000.bmp": b"BM" + struct.pack("<IHHI", 54 + 12, 0, 0, 54)
        + struct.pack("<IiiHHIIiiII", 40, 20000, 20000, 1, 24, 0, 12, 0, 0, 0, 0) + b"\0" * 12,
        "webp_16_ok.webp": webp_big,
        "aspect_1x2000.png": encode(Image.new("L", (1, 2000)), "PNG"),
        "aspect_1x20000.png": encode(Image.new("L", (1, 20000)), "PNG"),
        "aspect_200000x1.png": encode(Image.new("L", (200000, 1)), "PNG"),
        "aspect_2x400000.png": encode(Image.new("1", (2, 400000)), "PNG"),
    }
    return valid, bombs


# --- the oracle: what the server should answer ----------------------------------------------


@dataclass
class Expect:
    status: int
    rows: list[list[float]] | None = None  # 200: expected probabilities per image
    top_k: int = 5
    json_body: bool = True  # refusals: one-line JSON {"code","type","message"}
    loose: bool = False  # any status below 500 will do (MMS's own routing answers)
    reason: str = ""


def _sniff(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in MAGIC if data.startswith(magic)), None)


def _media(value: str | bytes | None) -> str | None:
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    return text.split(";", 1)[0].strip().lower() or None


def _accept_ok(accept: str | None) -> bool:
    if not accept or not accept.strip():
        return True
    for part in accept.split(","):
        media, _, params = part.partition(";")
        if media.strip().lower() in (JSON_TYPE, "application/*", "*/*") and not re.search(
                r"(^|;)\s*q\s*=\s*0(\.0*)?\s*$", params):
            return True
    return False


def _b64(item: Any) -> bytes | None:
    if not isinstance(item, str):
        return None
    if item.startswith("data:"):
        item = item.partition(",")[2]
    text = "".join(item.split()).replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


class Oracle:
    """Expected answers; reference probabilities from model_artifact, once per distinct image."""

    def __init__(self, model_dir: Path, limits: Limits) -> None:
        import torch

        from model_artifact.network import load_artifact

        torch.set_num_threads(1)  # leave the CPUs to the server
        self.torch = torch
        self.limits = limits
        model, self.manifest = load_artifact(model_dir)
        self.model = model.to(memory_format=torch.channels_last)
        self.pre = self.manifest.preprocessing
        self.transform = self.pre.transform()
        self.cache: dict[str, tuple[int, Any]] = {}

    def image(self, data: bytes) -> tuple[int, Any]:
        """(200, probabilities) or (400/413, reason) for one encoded image."""
        from model_artifact.preprocess import ImageDecodeError, ImageTooLargeError, load_image

        key = hashlib.sha1(data).hexdigest()
        if key in self.cache:
            return self.cache[key]
        try:
            image = load_image(data, min_side=self.pre.min_side, max_pixels=self.limits.max_pixels)
        except ImageTooLargeError as exc:
            result: tuple[int, Any] = (413, str(exc))
        except ImageDecodeError as exc:
            result = (400, str(exc))
        else:
            short, long = min(image.size), max(image.size)
            resized = self.pre.resize * int(self.pre.resize * long / short)
            if resized > self.limits.max_pixels:
                result = (413, f"resized to {resized} pixels")
            else:
                tensor = self.transform(image).unsqueeze(0)
                with self.torch.inference_mode():
                    batch = tensor.contiguous(memory_format=self.torch.channels_last)
                    probs = self.torch.softmax(self.model(batch).float(), dim=1)[0].tolist()
                result = (200, probs)
        self.cache[key] = result
        return result

    def expect(self, method: str, path: str, headers: list[tuple[str, str | bytes]],
               body: bytes) -> Expect:
        if path != "/invocations" or method != "POST":
            return Expect(404, loose=True, json_body=False, reason="route")
        if len(body) > self.limits.max_bytes + MMS_REQUEST_SLACK:  # nginx's limit
            return Expect(413, reason="over the front's limit")
        hdr: dict[str, str | bytes] = {k.lower(): v for k, v in headers}
        accept = hdr.get("accept")
        if not _accept_ok(accept if isinstance(accept, str) else None):
            return Expect(406, reason="accept")
        top_k = 5  # SERVE_TOP_K's default
        custom = hdr.get(CUSTOM.lower())
        for part in re.split(r"[;,]", custom if isinstance(custom, str) else ""):
            key, _, value = part.partition("=")
            if key.strip().lower() == "top_k":
                try:
                    k = int(value.strip())
                except ValueError:
                    return Expect(400, reason="top_k")
                if k < 1:
                    return Expect(400, reason="top_k < 1")
                top_k = min(k, 100)
                break
        media = _media(hdr.get("content-type")) or "application/octet-stream"
        if media not in IMAGE_TYPES and media != JSON_TYPE:
            return Expect(415, reason=f"type {media!r}")
        if len(body) > self.limits.max_bytes:
            return Expect(413, reason="body size")
        if not body:
            return Expect(400, reason="empty")
        if media == JSON_TYPE:
            try:
                doc = json.loads(body)
            except (ValueError, RecursionError) as exc:
                return Expect(400, reason=f"json: {type(exc).__name__}")
            if isinstance(doc, dict) and "image" in doc:
                items, single = [doc["image"]], True
            elif isinstance(doc, dict) and isinstance(doc.get("images"), list):
                items, single = doc["images"], False
            elif isinstance(doc, list):
                items, single = doc, False
            else:
                return Expect(400, reason="json shape")
            if not items:
                return Expect(400, reason="no images")
            if len(items) > self.limits.max_images:
                return Expect(413, reason="too many images")
            images = []
            for item in items[:1] if single else items:
                decoded = _b64(item)
                if decoded is None:
                    return Expect(400, reason="base64")
                images.append(decoded)
        else:
            images = [body]
        for data in images:
            if not data or _sniff(data) is None:
                return Expect(400, reason="not an image")
        rows = []
        for data in images:
            status, value = self.image(data)
            if status != 200:
                return Expect(status, reason=f"image: {value}")
            rows.append(value)
        return Expect(200, rows=rows, top_k=min(top_k, self.manifest.num_classes))


# --- checking an answer -------------------------------------------------------------------


def check_reply(reply: Reply, expect: Expect, class_names: tuple[str, ...],
                tolerance: float = 1e-4) -> str | None:
    """None if the answer is right, else what is wrong (one line)."""
    if reply.status >= 500:
        return f"5xx: {reply.status} {reply.body[:200]!r}"
    if reply.status == 0:
        if expect.reason == "over the front's limit":
            return None  # nginx may close the connection while the client still sends
        return f"no answer: {reply.error}"
    if expect.loose:
        return None
    if reply.status != expect.status:
        return f"status {reply.status}, expected {expect.status} ({expect.reason}): " \
               f"{reply.body[:200]!r}"
    if expect.status != 200:
        if not expect.json_body:
            return None
        if not reply.content_type.startswith(JSON_TYPE):
            return f"refusal with content type {reply.content_type!r}"
        text = reply.body.decode("utf-8", "replace")
        if "Traceback" in text or "\n" in text.strip():
            return f"refusal body is not one line: {text[:200]!r}"
        try:
            doc = json.loads(text)
        except ValueError:
            return f"refusal body is not JSON: {text[:200]!r}"
        if doc.get("code") != expect.status or not doc.get("message"):
            return f"refusal body lacks code/message: {text[:200]!r}"
        return None
    try:
        predictions = json.loads(reply.body)["predictions"]
    except (ValueError, KeyError, TypeError):
        return f"200 without predictions: {reply.body[:200]!r}"
    assert expect.rows is not None
    if len(predictions) != len(expect.rows):
        return f"{len(predictions)} predictions for {len(expect.rows)} images"
    for row, prediction in zip(expect.rows, predictions, strict=True):
        top = prediction.get("top_k", [])
        if len(top) != expect.top_k:
            return f"{len(top)} classes, expected top_k={expect.top_k}"
        ranked = sorted(range(len(row)), key=row.__getitem__, reverse=True)
        tie = len(row) > 1 and row[ranked[0]] - row[ranked[1]] < 10 * tolerance
        if top[0]["index"] != ranked[0] and not tie:
            return f"top-1 {top[0]['index']}, reference {ranked[0]}"
        for entry in top:
            j = entry["index"]
            if class_names[j] != entry["label"]:
                return f"label {entry['label']!r} for index {j}"
            if abs(entry["probability"] - row[j]) > tolerance:
                return f"class {j}: probability {entry['probability']}, reference {row[j]}"
    return None


# --- the requests -------------------------------------------------------------------------


@dataclass
class Case:
    category: str
    body: bytes
    headers: list[tuple[str, str | bytes]] = field(default_factory=list)
    method: str = "POST"
    path: str = "/invocations"


def _b64s(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Generator:
    def __init__(self, rng: random.Random, valid: dict[str, bytes], bombs: dict[str, bytes],
                 limits: Limits) -> None:
        self.rng, self.valid, self.bombs, self.limits = rng, valid, bombs, limits
        self.valid_names = sorted(valid)
        self.mutable = [n for n in self.valid_names if n.endswith((".jpg", ".png", ".webp",
                                                                  ".gif"))]
        self.hostile: list[tuple[int, Callable[[], Case]]] = [
            (12, self.truncated), (12, self.bit_flipped), (5, self.overwritten),
            (3, self.zero_length), (8, self.random_bytes), (6, self.bomb),
            (6, self.odd_format), (8, self.content_type), (4, self.headers),
            (10, self.bad_json), (6, self.json_images), (3, self.over_payload),
            (3, self.over_batch), (1, self.route),
        ]
        self.total = sum(w for w, _ in self.hostile)

    def pick(self) -> bytes:
        return self.valid[self.rng.choice(self.valid_names)]

    def image_case(self, category: str, data: bytes) -> Case:
        ct = self.rng.choice(["image/jpeg", "image/png", "application/x-image",
                              "application/octet-stream", None])
        return Case(category, data, [("Content-Type", ct)] if ct else [])

    def valid_case(self) -> Case:
        if self.rng.random() < 0.25:
            n = self.rng.randint(1, min(4, self.limits.max_images))
            doc = {"images": [_b64s(self.pick()) for _ in range(n)]}
            return Case("valid-json-batch", json.dumps(doc).encode(),
                        [("Content-Type", JSON_TYPE), (CUSTOM, "top_k=5")])
        case = self.image_case("valid", self.pick())
        case.headers.append((CUSTOM, f"top_k={self.rng.choice([1, 3, 5])}"))
        return case

    def hostile_case(self) -> Case:
        x = self.rng.uniform(0, self.total)
        for weight, make in self.hostile:
            x -= weight
            if x <= 0:
                return make()
        return self.hostile[-1][1]()

    # generators of hostile requests
    def truncated(self) -> Case:
        data = self.valid[self.rng.choice(self.mutable)]
        cut = self.rng.choice([self.rng.randrange(1, len(data)), self.rng.randrange(1, 64),
                               len(data) - self.rng.randint(1, 16)])
        return self.image_case("truncated", data[:max(1, cut)])

    def bit_flipped(self) -> Case:
        data = bytearray(self.valid[self.rng.choice(self.mutable)])
        for _ in range(self.rng.choice([1, 1, 2, 4, 16])):
            pos = self.rng.randrange(len(data))
            data[pos] ^= 1 << self.rng.randrange(8)
        return self.image_case("bit-flipped", bytes(data))

    def overwritten(self) -> Case:
        data = bytearray(self.valid[self.rng.choice(self.mutable)])
        start = self.rng.randrange(min(len(data), 400))
        run = self.rng.randint(1, 64)
        data[start:start + run] = self.rng.randbytes(run)
        return self.image_case("overwritten", bytes(data))

    def zero_length(self) -> Case:
        ct = self.rng.choice(["image/jpeg", "image/png", "image/webp", JSON_TYPE])
        return Case("zero-length", b"", [("Content-Type", ct)])

    def random_bytes(self) -> Case:
        data = self.rng.randbytes(self.rng.choice([1, 7, 100, 5000, 60000]))
        if self.rng.random() < 0.5:
            data = self.rng.choice([b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"GIF89a",
                                    b"RIFF\0\0\0\0WEBPVP8 ", b"BM", b"II*\x00"]) + data
        return self.image_case("random-bytes", data)

    def bomb(self) -> Case:
        name = self.rng.choice(sorted(self.bombs))
        return self.image_case(f"bomb:{name}", self.bombs[name])

    def odd_format(self) -> Case:
        name = self.rng.choice([n for n in self.valid_names if not n.startswith("photo")])
        return self.image_case(f"format:{name}", self.valid[name])

    def content_type(self) -> Case:
        ct: str | bytes | None = self.rng.choice([
            "text/csv", "text/plain", "application/xml", "image/gif", "image/bmp", "video/mp4",
            "multipart/form-data; boundary=xyz", "application/x-www-form-urlencoded",
            JSON_TYPE, "", "garbage", "image/jpeg; charset=binary", "IMAGE/PNG ", ";;;",
            "image/jpeg/extra", b"image/\xe9\xff", None,
        ])
        data = self.pick() if self.rng.random() < 0.8 else self.rng.randbytes(200)
        return Case(f"content-type:{ct!r}", data,
                    [("Content-Type", ct)] if ct is not None else [])

    def headers(self) -> Case:
        header = self.rng.choice([
            ("Accept", "text/csv"), ("Accept", "application/json;q=0"), ("Accept", "image/*"),
            ("Accept", "*/*"), ("Accept", "application/json, text/csv"), (CUSTOM, "top_k=abc"),
            (CUSTOM, "top_k=0"), (CUSTOM, "top_k=-3"), (CUSTOM, "top_k="),
            (CUSTOM, "top_k=" + "9" * 30), (CUSTOM, "a=b;c;top_k=2"), (CUSTOM, "x" * 4000),
        ])
        case = self.image_case(f"header:{header[0]}={header[1][:20]}", self.pick())
        case.headers.append(header)
        return case

    def bad_json(self) -> Case:
        good = json.dumps({"images": [_b64s(self.pick())]})
        body = self.rng.choice([
            good[: self.rng.randrange(1, len(good))].encode(),
            b'{"image": "\xff\xfe"}', b"\xff\xfe{}", b"[" * 100_000 + b"]" * 100_000,
            b'{"a":' * 50_000 + b"1" + b"}" * 50_000, b"null", b"42", b'"str"', b"{}", b"[]",
            b'{"images": []}', b'{"images": "abc"}', b'{"image": 5}', b'{"image": null}',
            b'{"images": [1, 2]}', b'{"images": [[]]}', b"NaN", b'{"image": "' + b"A" * 3 + b'"}',
            b'{"image": "%%%"}', b'{"image": "data:image/png;base64,@@@"}', b"1e99999999",
            b'{"image": "' + b"\\ud800" + b'"}', self.rng.randbytes(300),
        ])
        return Case("bad-json", body, [("Content-Type", self.rng.choice(
            [JSON_TYPE, "application/json; charset=utf-8", "Application/JSON"]))])

    def json_images(self) -> Case:
        """Valid JSON carrying hostile or oddly encoded images."""
        data = self.rng.choice([self.pick(), self.truncated().body, self.bit_flipped().body,
                                self.bombs[self.rng.choice(sorted(self.bombs))]])
        b64 = _b64s(data)
        item = self.rng.choice([
            b64, base64.urlsafe_b64encode(data).decode(), f"data:image/png;base64,{b64}",
            "\n".join(b64[i:i + 76] for i in range(0, len(b64), 76)), b64[:-1], b64 + "!",
        ])
        shape = self.rng.choice(["image", "images", "list", "mixed"])
        if shape == "image":
            doc: Any = {"image": item}
        elif shape == "images":
            doc = {"images": [item]}
        elif shape == "list":
            doc = [_b64s(self.pick()), item]
        else:
            doc = {"images": [_b64s(self.pick()), item, _b64s(self.pick())]}
        return Case(f"json-image:{shape}", json.dumps(doc).encode(),
                    [("Content-Type", JSON_TYPE)])

    def over_payload(self) -> Case:
        limit = self.limits.max_bytes
        if self.rng.random() < 0.15:
            size = limit + MMS_REQUEST_SLACK + self.rng.randint(1, 100_000)
        else:
            size = limit + self.rng.randint(1, MMS_REQUEST_SLACK - 1024)
        prefix = self.pick()
        body = prefix + b"\0" * (size - len(prefix))
        where = "front" if size > limit + MMS_REQUEST_SLACK else "handler"
        return Case(f"over-payload:{where}", body, [("Content-Type", "image/jpeg")])

    def over_batch(self) -> Case:
        n = self.limits.max_images + self.rng.randint(1, 8)
        item = _b64s(self.valid["1x1.png"])
        return Case("over-batch", json.dumps({"images": [item] * n}).encode(),
                    [("Content-Type", JSON_TYPE)])

    def route(self) -> Case:
        method, path = self.rng.choice([("GET", "/invocations"), ("PUT", "/invocations"),
                                        ("POST", "/invocation"), ("POST", "/models/x"),
                                        ("DELETE", "/invocations")])
        return Case(f"route:{method} {path}", self.pick(), [("Content-Type", "image/jpeg")],
                    method=method, path=path)


# --- the run ------------------------------------------------------------------------------


@dataclass
class Result:
    sent: int = 0
    hostile: int = 0
    valid: int = 0
    statuses: Counter = field(default_factory=Counter)
    categories: Counter = field(default_factory=Counter)
    failures: list[dict[str, Any]] = field(default_factory=list)
    workers_before: list[int] = field(default_factory=list)
    workers_after: list[int] = field(default_factory=list)
    restart_lines: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stopped_early: str = ""

    @property
    def five_xx(self) -> int:
        return sum(n for s, n in self.statuses.items() if s >= 500)

    @property
    def ok(self) -> bool:
        return (not self.failures and not self.restart_lines and not self.stopped_early
                and self.workers_before == self.workers_after and bool(self.workers_before))

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "sent": self.sent, "hostile": self.hostile, "valid": self.valid,
            "responses_5xx": self.five_xx, "failures": len(self.failures),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "workers_before": self.workers_before, "workers_after": self.workers_after,
            "restart_lines": self.restart_lines[:20], "seconds": round(self.seconds, 1),
            "stopped_early": self.stopped_early,
            "categories": dict(sorted(self.categories.items())),
            "first_failures": self.failures[:20],
        }


def run_fuzz(target: Target, oracle: Oracle, *, requests: int, seed: int, valid_every: int,
             max_seconds: float, photos: list[Path] = SAMPLE_PHOTOS,
             log: Callable[[str], None] = lambda line: None) -> Result:
    """``requests`` hostile requests plus a valid one every ``valid_every``, seeded."""
    rng = random.Random(seed)
    valid, bombs = build_pool(photos)
    gen = Generator(rng, valid, bombs, oracle.limits)
    result = Result(workers_before=sorted(target.worker_pids()))
    logs_before = len(target.logs())
    start = time.monotonic()
    class_names = oracle.manifest.class_names
    while result.hostile < requests:
        if time.monotonic() - start > max_seconds:
            result.stopped_early = f"time limit {max_seconds} s after {result.sent} requests"
            break
        is_valid = valid_every > 0 and result.sent % valid_every == valid_every - 1
        case = gen.valid_case() if is_valid else gen.hostile_case()
        expect = oracle.expect(case.method, case.path, case.headers, case.body)
        reply = target.request(case.method, case.path, case.body, case.headers)
        result.sent += 1
        result.valid += is_valid
        result.hostile += not is_valid
        result.statuses[reply.status] += 1
        result.categories[f"{case.category.split(':')[0]}->{reply.status}"] += 1
        problem = check_reply(reply, expect, class_names)
        if problem:
            result.failures.append({"n": result.sent, "category": case.category,
                                    "expected": expect.status, "got": reply.status,
                                    "problem": problem[:300], "body_bytes": len(case.body)})
            log(f"#{result.sent} {case.category}: {problem[:300]}")
        if result.sent % 250 == 0:
            log(f"{result.sent} sent, {result.five_xx} 5xx, {len(result.failures)} failures, "
                f"{time.monotonic() - start:.0f} s")
            if not target.worker_pids():
                result.stopped_early = "no worker left"
                break
    result.seconds = time.monotonic() - start
    time.sleep(2)  # let MMS flush its log
    result.workers_after = sorted(target.worker_pids())
    new_logs = target.logs()[logs_before:]
    result.restart_lines = [line.strip()[:300] for line in new_logs.splitlines()
                            if RESTART_PATTERNS.search(line)]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True,
                        help="artifact (manifest.json + model.pt): served and used as reference")
    parser.add_argument("--host-mms", action="store_true",
                        help="run python -m container_serve here instead of the image")
    parser.add_argument("--image", default=SERVE_IMAGE)
    parser.add_argument("--port", type=int, help="a server already listening on 127.0.0.1")
    parser.add_argument("--memory", default="6g",
                        help="docker run --memory for the image ('' for none)")
    parser.add_argument("--requests", type=int, default=2000, help="hostile requests")
    parser.add_argument("--valid-every", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=3600)
    parser.add_argument("--ready-timeout", type=float, default=300)
    parser.add_argument("--max-bytes", type=int, default=Limits.max_bytes)
    parser.add_argument("--max-images", type=int, default=Limits.max_images)
    parser.add_argument("--max-pixels", type=int, default=Limits.max_pixels)
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)

    limits = Limits(args.max_bytes, args.max_images, args.max_pixels)

    def log(line: str) -> None:
        print(f"fuzz: {line}", file=sys.stderr, flush=True)

    oracle = Oracle(args.model_dir, limits)
    target = start_target(args, limits, SAMPLE_PHOTOS[0].read_bytes())
    log(f"{target.kind} on {HOST}:{target.port}, workers {sorted(target.worker_pids())}")
    try:
        result = run_fuzz(target, oracle, requests=args.requests, seed=args.seed,
                          valid_every=args.valid_every, max_seconds=args.max_seconds, log=log)
    finally:
        target.stop()
    summary = {"target": target.kind, "seed": args.seed, **result.summary()}
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
