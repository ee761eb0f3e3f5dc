"""Hostile requests against the real server: every answer must be what docs/serving-api.md says.

Sends ``--requests`` hostile requests (default 2,000), interleaved with valid ones (one in
``--valid-every``), to the serving image (``docker run IMAGE serve``, the default) or to a host
multi-model-server (``--host-mms``: ``python -m container_serve``), both started here on a free
loopback port with ``--model-dir`` mounted/served, or to one already running (``--port``).

Hostile: truncated, bit-flipped, overwritten and zero-length JPEG/PNG/WebP/GIF; random bytes
(with and without a format's magic number); decompression bombs (headers claiming 20000x20000,
and a real 1-bit PNG of 20000x20000 zeros); extreme aspect ratios (1xN); multi-frame GIF/WebP;
16-bit, palette, LA and CMYK images; wrong, odd and missing content types, with and without a
bad Accept, forms included; bad Accept and top_k; invalid JSON (truncated, non-UTF-8, UTF-16
and UTF-32, integers of 5,000 digits, nested 100,000 deep, wrong shapes), invalid base64;
requests just under and just over every limit (body bytes, images per request, decoded pixels
per image, resized pixels, pixels per request) and 48-50 MP phone JPEGs; malformed URIs and
query strings; wrong methods and paths.

The expectation of each request is written down by the code that builds it, from what a client
knows: the format and size of each image it made (and whether its data is intact), the content
type and Accept it declared, the body's size, the artifact's resize, and the limits and rules
that docs/serving-api.md states. It never asks the server's code what it would do; the only
in-process computation is the reference answer of a 200 (model_artifact's decoding and model,
once per distinct image). Targets: no 5xx, no traceback and no worker death in the logs (each
log read from its own offset), the same worker PIDs at every checkpoint, every answer's status
exactly the documented one, every refusal a one-line JSON reason, every 200 equal to the
reference (same top-1, probabilities within 1e-4).

    .venv/bin/python -m bench.fuzz_serve --model-dir DIR                 # serving image
    .venv/bin/python -m bench.fuzz_serve --model-dir DIR --host-mms      # host MMS
    .venv/bin/python -m bench.fuzz_serve --model-dir DIR --requests 200 --seed 1 --pause 0.01

Only 127.0.0.1 is ever a target. Exit 0 when every target is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import io
import json
import math
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

from bench.local_server import free_port, stop_session
from container_serve.serve import MMS_REQUEST_SLACK
from job_contract.images import local_image

REPO = Path(__file__).resolve().parents[1]

SAMPLE_PHOTOS = sorted((REPO / "sample_data" / "photos5" / "test").glob("*/*.jpg"))
SERVE_IMAGE = local_image("serve")
HOST = "127.0.0.1"  # the only address this script ever connects to
CUSTOM = "X-Amzn-SageMaker-Custom-Attributes"
# Lines MMS writes when a backend worker dies or is restarted.
RESTART_PATTERNS = re.compile(
    r"Backend worker process die|worker process died|Worker disconnected|Retry worker|"
    r"Backend worker monitoring thread interrupted|Load model failed|OutOfMemory|Killed",
    re.IGNORECASE,
)
TRACEBACK = re.compile(r"Traceback \(most recent call last\)")
JSON_TYPE = "application/json"
# docs/serving-api.md, as a client reads it: the image content types, the form types nginx
# answers 415 before anything else, and the pixels any image header (or a request's headers
# together) may claim.
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff",
               "application/x-image", "application/octet-stream")
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data; boundary=xyz",
              "Multipart/Mixed")
HEADER_PIXEL_CAP = 268_435_456


# --- the server under test ----------------------------------------------------------------------


@dataclass
class Limits:
    max_bytes: int = 6_553_500
    max_images: int = 16
    max_pixels: int = 40_000_000
    max_request_pixels: int = 0  # 0: the documented default, twice max_pixels

    def __post_init__(self) -> None:
        self.max_request_pixels = self.max_request_pixels or 2 * self.max_pixels

    def env(self) -> dict[str, str]:
        return {"SERVE_MAX_REQUEST_BYTES": str(self.max_bytes),
                "SERVE_MAX_IMAGES": str(self.max_images),
                "SERVE_MAX_PIXELS": str(self.max_pixels),
                "SERVE_MAX_REQUEST_PIXELS": str(self.max_request_pixels)}


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

    def log_marks(self) -> dict[str, int]:
        """Where each log ends now (bytes), for :meth:`logs_since`."""
        return {}

    def logs_since(self, marks: dict[str, int]) -> str:
        """What each log gained after ``marks``, each read from its own offset."""
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

    def _log_files(self) -> list[Path]:
        return [self.log_path, *sorted((self.runtime / "logs").glob("*.log"))]

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self._log_files() if p.exists())

    def log_marks(self) -> dict[str, int]:
        return {str(p): p.stat().st_size for p in self._log_files() if p.exists()}

    def logs_since(self, marks: dict[str, int]) -> str:
        parts = []
        for path in self._log_files():
            if path.exists():
                with path.open("rb") as stream:
                    stream.seek(marks.get(str(path), 0))
                    parts.append(stream.read().decode(errors="replace"))
        return "\n".join(parts)

    def stop(self) -> None:
        stop_session(self.proc, self._processes)
        shutil.rmtree(self.tmp, ignore_errors=True)


class DockerServe(Target):
    """``docker run IMAGE serve`` with the model dir at /opt/ml/model, published on loopback."""

    kind = "docker"

    def __init__(self, image: str, model_dir: Path, env: dict[str, str],
                 workers: int | None = None, memory: str | None = None,
                 name_prefix: str = "") -> None:
        super().__init__(free_port())
        self.name = f"{name_prefix}fuzz-serve-{uuid.uuid4().hex[:8]}"
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

    def _streams(self) -> dict[str, bytes]:
        proc = subprocess.run(["docker", "logs", self.name], capture_output=True, timeout=120)
        return {"stdout": proc.stdout, "stderr": proc.stderr}

    def logs(self) -> str:
        streams = self._streams()
        text = (streams["stdout"] + streams["stderr"]).decode(errors="replace")
        return text or self._logs_at_stop

    def log_marks(self) -> dict[str, int]:
        return {name: len(data) for name, data in self._streams().items()}

    def logs_since(self, marks: dict[str, int]) -> str:
        return "\n".join(data[marks.get(name, 0):].decode(errors="replace")
                         for name, data in self._streams().items())

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
                             memory=args.memory or None, name_prefix=args.name_prefix)
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


@dataclass(frozen=True)
class Img:
    """An image the client made, and what it knows about it."""

    data: bytes
    fmt: str  # JPEG | PNG | WEBP | GIF | BMP | TIFF | "" (not an image format)
    size: tuple[int, int] = (0, 0)
    intact: bool = True  # False: the data behind the header is not a whole image
    outcome: frozenset[int] | None = None  # mutated bytes: what the client cannot tell apart


def _image(image: Any, fmt: str, **save: Any) -> Img:
    return Img(encode(image, fmt, **save), fmt, image.size)


def build_pool(photos: list[Path], limits: Limits, resize: int
               ) -> tuple[dict[str, Img], dict[str, Img], dict[str, list[Img]]]:
    """(valid images, bombs and odd shapes, requests at the limits), made once, in memory."""
    from PIL import Image

    valid: dict[str, Img] = {}
    for i, path in enumerate(photos[:6]):
        with Image.open(path) as photo:
            valid[f"photo{i}.jpg"] = Img(path.read_bytes(), "JPEG", photo.size)
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
        "rgb.png": _image(small, "PNG"),
        "lossy.webp": _image(small, "WEBP", quality=80),
        "lossless.webp": _image(small, "WEBP", lossless=True),
        "multi.gif": _image(frames[0], "GIF", save_all=True, append_images=frames[1:],
                            duration=100),
        "multi.webp": _image(frames[0], "WEBP", save_all=True, append_images=frames[1:],
                             duration=100),
        "16bit.png": _image(i16, "PNG"),
        "palette.png": _image(small.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "palette_trns.png": _image(palette_t, "PNG"),
        "la.png": _image(small.convert("LA"), "PNG"),
        "rgba.png": _image(rgba, "PNG"),
        "cmyk.jpg": _image(small.convert("CMYK"), "JPEG"),
        "gray.jpg": _image(small.convert("L"), "JPEG"),
        "progressive.jpg": _image(small, "JPEG", progressive=True, quality=90),
        "exif_rotated.jpg": _image(small, "JPEG", exif=exif),
        "rgb.bmp": _image(small, "BMP"),
        "rgb.tiff": _image(small, "TIFF"),
        "1x1.png": _image(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"),
        "wide_4x1.png": _image(small.resize((400, 100)), "PNG"),
    })
    jpeg = valid["progressive.jpg"].data
    gif = bytearray(valid["multi.gif"].data)
    gif[6:10] = struct.pack("<HH", 20000, 20000)  # logical screen
    big = (20000, 20000)
    bombs = {
        "png_header_20000.png": Img(png_bomb(*big, real=False), "PNG", big, intact=False),
        "png_real_20000.png": Img(png_bomb(*big, real=True), "PNG", big),
        "jpeg_sof_20000.jpg": Img(patch_jpeg_size(encode(small, "JPEG"), *big), "JPEG", big,
                                  intact=False),
        "jpeg_progressive_20000.jpg": Img(patch_jpeg_size(jpeg, *big), "JPEG", big,
                                          intact=False),
        "gif_screen_20000.gif": Img(bytes(gif), "GIF", big, intact=False),
        "bmp_20000.bmp": Img(b"BM" + struct.pack("<IHHI", 54 + 12, 0, 0, 54) + struct.pack(
            "<IiiHHIIiiII", 40, 20000, 20000, 1, 24, 0, 12, 0, 0, 0, 0) + b"\0" * 12, "BMP",
            big, intact=False),
        "webp_16_ok.webp": _image(Image.new("RGB", (16, 16)), "WEBP", lossless=True),
        "aspect_1x2000.png": _image(Image.new("L", (1, 2000)), "PNG"),
        "aspect_1x20000.png": _image(Image.new("L", (1, 20000)), "PNG"),
        "aspect_200000x1.png": _image(Image.new("L", (200000, 1)), "PNG"),
        "aspect_2x400000.png": _image(Image.new("1", (2, 400000)), "PNG"),
        # Phone photos: 48-50 MP headers that draft mode decodes at 1/8 scale.
        "phone_8000x6000.jpg": _image(Image.new("RGB", (8000, 6000), (90, 140, 60)), "JPEG",
                                      quality=60, optimize=True),
        "phone_8160x6144.jpg": _image(Image.new("RGB", (6144, 8160), (30, 60, 200)), "JPEG",
                                      quality=60, optimize=True),
    }
    return valid, bombs, at_limits(limits, resize)


def at_limits(limits: Limits, resize: int) -> dict[str, list[Img]]:
    """Requests (lists of images) just under and just over each pixel limit."""
    from PIL import Image

    side = math.isqrt(limits.max_pixels)
    at_pixels = _image(Image.new("1", (side, limits.max_pixels // side)), "PNG")
    over_pixels = _image(Image.new("1", (side, limits.max_pixels // side + 1)), "PNG")
    long = limits.max_pixels // (resize * resize) + 2
    while resize * int(resize * long) > limits.max_pixels:  # Resize(resize) of a 1 x long PNG
        long -= 1
    thin = _image(Image.new("L", (1, long)), "PNG")
    thin_over = _image(Image.new("L", (1, long + 2)), "PNG")
    per_request = max(1, limits.max_request_pixels // cost(at_pixels, resize))
    requests = {
        "pixels-under": [at_pixels], "pixels-over": [over_pixels],
        "resized-under": [thin], "resized-over": [thin_over],
    }
    if per_request <= limits.max_images:
        requests["request-pixels-under"] = [at_pixels] * per_request
    if per_request + 1 <= limits.max_images:
        requests["request-pixels-over"] = [at_pixels] * (per_request + 1)
    return requests


# --- what the documentation says the answer is -------------------------------------------


def decoded_size(img: Img, resize: int) -> tuple[int, int]:
    """docs/serving-api.md: a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that
    keeps both sides at least ``resize``; other formats at full size."""
    w, h = img.size
    if img.fmt != "JPEG":
        return w, h
    scale = next(a for a in (8, 4, 2, 1) if a == 1 or min(w // resize, h // resize) >= a)
    return -(-w // scale), -(-h // scale)


def cost(img: Img, resize: int) -> int:
    """Pixels decoded or made by Resize(resize) (short side to ``resize``), the larger."""
    w, h = decoded_size(img, resize)
    return max(w * h, resize * int(resize * max(w, h) / min(w, h)))


def image_outcome(img: Img, limits: Limits, resize: int) -> frozenset[int]:
    if img.outcome is not None:
        return img.outcome
    if not img.fmt or not img.data:
        return frozenset({400})
    w, h = img.size
    if w * h > HEADER_PIXEL_CAP or cost(img, resize) > limits.max_pixels:
        return frozenset({413})
    return frozenset({200 if img.intact else 400})


def images_outcome(images: list[Img], limits: Limits, resize: int) -> frozenset[int]:
    """One request's images: every one fine -> 200 unless the request's totals are over the
    documented limits (413); otherwise what the failing images allow."""
    outcomes = [image_outcome(img, limits, resize) for img in images]
    if all(o == {200} for o in outcomes):
        over = (sum(cost(i, resize) for i in images) > limits.max_request_pixels
                or sum(i.size[0] * i.size[1] for i in images) > HEADER_PIXEL_CAP)
        return frozenset({413 if over else 200})
    return frozenset().union(*(o for o in outcomes if o != {200}))


@dataclass
class Expect:
    statuses: frozenset[int]  # the documented answers; more than one only for mutated bytes
    images: list[Img] = field(default_factory=list)  # a 200 must equal their reference
    top_k: int = 5
    json_body: bool = True  # refusals: JSON {"code","type","message"}
    one_line: bool = True  # ours are one line; MMS's own (404) are pretty-printed
    may_close: bool = False  # nginx may close the connection while the client still sends
    reason: str = ""


class Reference:
    """Reference probabilities of a 200: model_artifact's decoding and model, per image."""

    def __init__(self, model_dir: Path) -> None:
        import torch

        from model_artifact.network import load_artifact

        torch.set_num_threads(1)  # leave the CPUs to the server
        self.torch = torch
        model, self.manifest = load_artifact(model_dir)
        self.model = model.to(memory_format=torch.channels_last)
        self.pre = self.manifest.preprocessing
        self.transform = self.pre.transform()
        # Serving divides the logits by the artifact's temperature (SERVE_CALIBRATION default).
        calibration = self.manifest.calibration
        self.temperature = calibration.temperature if calibration else 1.0
        self.cache: dict[str, list[float] | None] = {}

    def probabilities(self, data: bytes) -> list[float] | None:
        """None if the reference cannot decode the bytes at all (no limits applied here)."""
        from model_artifact.preprocess import ImageDecodeError, load_image

        key = hashlib.sha1(data).hexdigest()
        if key not in self.cache:
            try:
                image = load_image(data, min_side=self.pre.min_side, max_pixels=1 << 40)
            except ImageDecodeError:
                self.cache[key] = None
            else:
                tensor = self.transform(image).unsqueeze(0)
                with self.torch.inference_mode():
                    batch = tensor.contiguous(memory_format=self.torch.channels_last)
                    logits = self.model(batch).float() / self.temperature
                    probs = self.torch.softmax(logits, dim=1)[0].tolist()
                self.cache[key] = probs
        return self.cache[key]


# --- checking an answer -------------------------------------------------------------------


def _refusal_problem(reply: Reply, status: int, one_line: bool) -> str | None:
    if not reply.content_type.startswith(JSON_TYPE):
        return f"refusal with content type {reply.content_type!r}"
    text = reply.body.decode("utf-8", "replace")
    if "Traceback" in text or (one_line and "\n" in text.strip()):
        return f"refusal body is not one line: {text[:200]!r}"
    try:
        doc = json.loads(text)
    except ValueError:
        return f"refusal body is not JSON: {text[:200]!r}"
    if not isinstance(doc, dict) or doc.get("code") != status or not doc.get("message"):
        return f"refusal body lacks code/message: {text[:200]!r}"
    return None


def check_reply(reply: Reply, expect: Expect, reference: Reference,
                tolerance: float = 1e-4) -> str | None:
    """None if the answer is right, else what is wrong (one line)."""
    if reply.status == 0:
        return None if expect.may_close else f"no answer: {reply.error}"
    if reply.status not in expect.statuses:
        return f"status {reply.status}, expected {sorted(expect.statuses)} ({expect.reason}): " \
               f"{reply.body[:200]!r}"
    if reply.status != 200:
        if not expect.json_body:
            return None
        return _refusal_problem(reply, reply.status, expect.one_line)
    try:
        predictions = json.loads(reply.body)["predictions"]
    except (ValueError, KeyError, TypeError):
        return f"200 without predictions: {reply.body[:200]!r}"
    if len(predictions) != len(expect.images):
        return f"{len(predictions)} predictions for {len(expect.images)} images"
    names = reference.manifest.class_names
    for img, prediction in zip(expect.images, predictions, strict=True):
        row = reference.probabilities(img.data)
        if row is None:
            return "200 for an image the reference cannot decode"
        top = prediction.get("top_k", [])
        if len(top) != min(expect.top_k, len(names)):
            return f"{len(top)} classes, expected top_k={expect.top_k}"
        ranked = sorted(range(len(row)), key=row.__getitem__, reverse=True)
        tie = len(row) > 1 and row[ranked[0]] - row[ranked[1]] < 10 * tolerance
        if top[0]["index"] != ranked[0] and not tie:
            return f"top-1 {top[0]['index']}, reference {ranked[0]}"
        for entry in top:
            j = entry["index"]
            if names[j] != entry["label"]:
                return f"label {entry['label']!r} for index {j}"
            if abs(entry["probability"] - row[j]) > tolerance:
                return f"class {j}: probability {entry['probability']}, reference {row[j]}"
    return None


# --- the requests -------------------------------------------------------------------------


@dataclass
class Case:
    """A request and the answer its body alone would get; ``before_body`` is an answer that
    comes before the body is looked at (nginx's form 415, MMS's 404, Accept, top_k, content
    type), :meth:`finish` applies the documented order."""

    category: str
    body: bytes
    expect: Expect
    headers: list[tuple[str, str | bytes]] = field(default_factory=list)
    method: str = "POST"
    path: str = "/invocations"
    before_body: int = 0

    def finish(self, limits: Limits) -> Case:
        """docs/serving-api.md's order: nginx's body limit (limit + 1 MiB), nginx's form 415,
        MMS's routes, then the handler: Accept, top_k, content type, body size, the body."""
        if len(self.body) > limits.max_bytes + MMS_REQUEST_SLACK:
            self.expect.statuses, self.expect.may_close = frozenset({413}), True
        elif self.before_body:
            self.expect.statuses = frozenset({self.before_body})
        elif len(self.body) > limits.max_bytes:
            self.expect.statuses = frozenset({413})
        return self


def _b64s(data: bytes) -> str:
    return base64.b64encode(data).decode()


# (header, value, the documented answer when everything else is fine: 0 = as if absent)
HEADER_CASES: list[tuple[str, str, int]] = [
    ("Accept", "text/csv", 406), ("Accept", "application/json;q=0", 406),
    ("Accept", "image/*", 406), ("Accept", "*/*", 0), ("Accept", "application/json, text/csv", 0),
    ("Accept", "APPLICATION/JSON; charset=utf-8", 0), ("Accept", "text/html, application/*", 0),
    (CUSTOM, "top_k=abc", 400), (CUSTOM, "top_k=0", 400), (CUSTOM, "top_k=-3", 400),
    (CUSTOM, "top_k=", 400), (CUSTOM, "top_k=" + "9" * 30, 0), (CUSTOM, "a=b;c;top_k=2", 0),
    (CUSTOM, "x" * 4000, 0),
]
# (content type, documented answer for a good image body: 0 = decoded; 415 = refused)
CONTENT_TYPE_CASES: list[tuple[str | bytes | None, int]] = [
    ("text/csv", 415), ("text/plain", 415), ("application/xml", 415), ("video/mp4", 415),
    ("image/gif", 0), ("image/bmp", 0), ("image/tiff", 0), ("image/webp", 0), ("", 0),
    (None, 0), ("garbage", 415), ("image/jpeg; charset=binary", 0), ("IMAGE/PNG ", 0),
    (";;;", 0), ("image/jpeg/extra", 415), (b"image/\xe9\xff", 415), (JSON_TYPE, 400),
    *((form, 415) for form in FORM_TYPES),
]
# Methods and paths, with the documented answer (docs/serving-api.md, "Routes").
ROUTE_CASES: list[tuple[str, str, int]] = [
    ("GET", "/invocations", 0), ("PUT", "/invocations", 0), ("DELETE", "/invocations", 0),
    ("POST", "/invocations?top_k=3", 0), ("POST", "/invocations?", 0),
    ("POST", "/invocations?x=%zz", 400), ("POST", "/invocations?%", 400),
    ("POST", "/invocations?a=%00&b=%ff%fe", 0), ("POST", "/invocations?" + "q" * 3000, 0),
    ("POST", "/invocation", 404), ("POST", "/models/x", 404), ("POST", "/invocations/", 0),
    ("POST", "//invocations", 404), ("POST", "/%zz", 400), ("POST", "/invocations%00", 400),
    ("POST", "/" + "a" * 3000, 404),
]
NGINX_HTML_400 = ("/%zz", "/invocations%00")


class Generator:
    def __init__(self, rng: random.Random, photos: list[Path], limits: Limits,
                 resize: int) -> None:
        self.rng, self.limits, self.resize = rng, limits, resize
        self.valid, self.bombs, self.limit_cases = build_pool(photos, limits, resize)
        self.valid_names = sorted(self.valid)
        self.mutable = [n for n in self.valid_names if n.endswith((".jpg", ".png", ".webp",
                                                                  ".gif"))]
        self.hostile: list[tuple[int, Callable[[], Case]]] = [
            (12, self.truncated), (12, self.bit_flipped), (5, self.overwritten),
            (3, self.zero_length), (8, self.random_bytes), (6, self.bomb),
            (6, self.odd_format), (8, self.content_type), (4, self.headers),
            (12, self.bad_json), (6, self.json_images), (3, self.over_payload),
            (3, self.over_batch), (4, self.at_limit), (3, self.route),
        ]
        self.total = sum(w for w, _ in self.hostile)

    def outcome(self, images: list[Img]) -> frozenset[int]:
        return images_outcome(images, self.limits, self.resize)

    def pick(self) -> Img:
        return self.valid[self.rng.choice(self.valid_names)]

    def raw(self, category: str, img: Img, ct: str | bytes | None = "", top_k: int = 5
            ) -> Case:
        """One image as the body, a random image content type unless ``ct`` is given."""
        if ct == "":
            ct = self.rng.choice(["image/jpeg", "image/png", "application/x-image",
                                  "application/octet-stream", None])
        headers: list[tuple[str, str | bytes]] = [("Content-Type", ct)] if ct is not None else []
        expect = Expect(self.outcome([img]), [img], top_k=top_k, reason=category)
        return Case(category, img.data, expect, headers)

    def json_case(self, category: str, doc: Any, images: list[Img],
                  ct: str = JSON_TYPE) -> Case:
        expect = Expect(self.outcome(images), images, reason=category)
        return Case(category, json.dumps(doc).encode(), expect, [("Content-Type", ct)])

    def valid_case(self) -> Case:
        return self._valid_case().finish(self.limits)

    def _valid_case(self) -> Case:
        if self.rng.random() < 0.25:
            images = [self.pick() for _ in range(self.rng.randint(1, min(4,
                                                                      self.limits.max_images)))]
            case = self.json_case("valid-json-batch", {"images": [_b64s(i.data) for i in images]},
                                  images)
            case.headers.append((CUSTOM, "top_k=5"))
            return case
        k = self.rng.choice([1, 3, 5])
        case = self.raw("valid", self.pick(), top_k=k)
        case.headers.append((CUSTOM, f"top_k={k}"))
        return case

    def hostile_case(self) -> Case:
        x = self.rng.uniform(0, self.total)
        for weight, make in self.hostile:
            x -= weight
            if x <= 0:
                return make().finish(self.limits)
        return self.hostile[-1][1]().finish(self.limits)

    # generators of hostile requests
    def _mutable(self) -> Img:
        return self.valid[self.rng.choice(self.mutable)]

    def truncated(self) -> Case:
        img = self._mutable()
        data = img.data
        cut = self.rng.choice([self.rng.randrange(1, len(data)), self.rng.randrange(1, 64),
                               len(data) - self.rng.randint(1, 16)])
        # A cut header is a 400; a cut stream may still decode (Pillow keeps what it has).
        cut_img = Img(data[:max(1, cut)], img.fmt, img.size, outcome=frozenset({200, 400}))
        return self.raw("truncated", cut_img)

    def bit_flipped(self) -> Case:
        img = self._mutable()
        data = bytearray(img.data)
        for _ in range(self.rng.choice([1, 1, 2, 4, 16])):
            pos = self.rng.randrange(len(data))
            data[pos] ^= 1 << self.rng.randrange(8)
        # A flipped size field may claim anything: 413 is as documented as 200 and 400.
        return self.raw("bit-flipped", Img(bytes(data), img.fmt, img.size,
                                           outcome=frozenset({200, 400, 413})))

    def overwritten(self) -> Case:
        img = self._mutable()
        data = bytearray(img.data)
        start = self.rng.randrange(min(len(data), 400))
        run = self.rng.randint(1, 64)
        data[start:start + run] = self.rng.randbytes(run)
        return self.raw("overwritten", Img(bytes(data), img.fmt, img.size,
                                           outcome=frozenset({200, 400, 413})))

    def zero_length(self) -> Case:
        ct = self.rng.choice(["image/jpeg", "image/png", "image/webp", JSON_TYPE])
        return Case("zero-length", b"", Expect(frozenset({400}), reason="empty"),
                    [("Content-Type", ct)])

    def random_bytes(self) -> Case:
        data = self.rng.randbytes(self.rng.choice([1, 7, 100, 5000, 60000]))
        outcome = frozenset({400})
        if self.rng.random() < 0.5:
            data = self.rng.choice([b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"GIF89a",
                                    b"RIFF\0\0\0\0WEBPVP8 ", b"BM", b"II*\x00"]) + data
            outcome = frozenset({400, 413})  # random bytes after a magic may claim any size
        return self.raw("random-bytes", Img(data, "", outcome=outcome))

    def bomb(self) -> Case:
        name = self.rng.choice(sorted(self.bombs))
        return self.raw(f"bomb:{name}", self.bombs[name])

    def odd_format(self) -> Case:
        name = self.rng.choice([n for n in self.valid_names if not n.startswith("photo")])
        return self.raw(f"format:{name}", self.valid[name])

    def content_type(self) -> Case:
        ct, answer = self.rng.choice(CONTENT_TYPE_CASES)
        img = self.pick() if self.rng.random() < 0.8 else Img(self.rng.randbytes(200), "")
        case = self.raw(f"content-type:{ct!r}", img, ct)
        if answer == 400:  # JSON declared, image bytes sent: the body is not JSON
            case.expect.statuses = frozenset({400})
        elif answer:
            case.before_body = answer
        if self.rng.random() < 0.3:  # a bad Accept too: nginx answers forms before anything
            case.headers.append(("Accept", "text/csv"))
            form = isinstance(ct, str) and ct.lower().startswith(("application/x-www-form",
                                                                 "multipart/"))
            case.before_body = 415 if form else 406
        return case

    def headers(self) -> Case:
        name, value, answer = self.rng.choice(HEADER_CASES)
        case = self.raw(f"header:{name}={value[:20]}", self.pick())
        case.headers.append((name, value))
        if answer:
            case.before_body = answer
        elif value.startswith("top_k="):
            case.expect.top_k = min(int(value[6:]), 100)
        elif "top_k=2" in value:
            case.expect.top_k = 2
        return case

    def bad_json(self) -> Case:
        good = json.dumps({"images": [_b64s(self.pick().data)]})
        image_doc = {"image": _b64s(self.valid["rgb.png"].data)}
        body = self.rng.choice([
            good[: self.rng.randrange(1, len(good))].encode(),
            b'{"image": "\xff\xfe"}', b"\xff\xfe{}", b"[" * 100_000 + b"]" * 100_000,
            b'{"a":' * 50_000 + b"1" + b"}" * 50_000, b"null", b"42", b'"str"', b"{}", b"[]",
            b'{"images": []}', b'{"images": "abc"}', b'{"image": 5}', b'{"image": null}',
            b'{"images": [1, 2]}', b'{"images": [[]]}', b"NaN", b'{"image": "' + b"A" * 3 + b'"}',
            b'{"image": "%%%"}', b'{"image": "data:image/png;base64,@@@"}', b"1e99999999",
            b'{"image": "' + b"\\ud800" + b'"}', self.rng.randbytes(300),
            b'{"image": ' + b"9" * self.rng.choice([4301, 5000, 100_000]) + b"}",
            b'{"images": [' + b"1" * 4400 + b"]}", b"-" + b"7" * 4500,
            b'{"images": ' + b"[" * 5000 + b"]" * 5000 + b"}",
            json.dumps(image_doc).encode(self.rng.choice(["utf-16", "utf-16-le", "utf-16-be",
                                                          "utf-32", "utf-32-le", "utf-32-be"])),
        ])
        ct = self.rng.choice([JSON_TYPE, "application/json; charset=utf-8", "Application/JSON"])
        return Case("bad-json", body, Expect(frozenset({400}), reason="bad JSON"),
                    [("Content-Type", ct)])

    def json_images(self) -> Case:
        """Valid JSON carrying hostile or oddly encoded images."""
        img = self.rng.choice([self.pick(), self.truncated().expect.images[0],
                               self.bit_flipped().expect.images[0],
                               self.bombs[self.rng.choice(sorted(self.bombs))]])
        b64 = _b64s(img.data)
        encoding, item = self.rng.choice([
            ("b64", b64), ("urlsafe", base64.urlsafe_b64encode(img.data).decode()),
            ("data-url", f"data:image/png;base64,{b64}"),
            ("mime", "\n".join(b64[i:i + 76] for i in range(0, len(b64), 76))),
            ("cut", b64[:-1]), ("bang", b64 + "!"),
        ])
        shape = self.rng.choice(["image", "images", "list", "mixed", "bom"])
        good = [self.pick() for _ in range(2)]
        if shape in ("image", "bom"):
            doc: Any = {"image": item}
            images = [img]
        elif shape == "images":
            doc, images = {"images": [item]}, [img]
        elif shape == "list":
            doc, images = [_b64s(good[0].data), item], [good[0], img]
        else:
            doc = {"images": [_b64s(good[0].data), item, _b64s(good[1].data)]}
            images = [good[0], img, good[1]]
        case = self.json_case(f"json-image:{shape}", doc, images)
        if shape == "bom":  # a UTF-8 byte order mark is UTF-8 (docs/serving-api.md)
            case.body = b"\xef\xbb\xbf" + case.body
        if encoding in ("cut", "bang"):  # invalid base64 is a 400 before any image is read
            case.expect.statuses = frozenset({400})
        return case

    def over_payload(self) -> Case:
        limit = self.limits.max_bytes
        if self.rng.random() < 0.15:
            size = limit + MMS_REQUEST_SLACK + self.rng.randint(1, 100_000)
        else:
            size = limit + self.rng.randint(1, MMS_REQUEST_SLACK - 1024)
        prefix = self.pick().data
        body = prefix + b"\0" * (size - len(prefix))
        front = size > limit + MMS_REQUEST_SLACK
        return Case(f"over-payload:{'front' if front else 'handler'}", body,
                    Expect(frozenset({413}), may_close=front, reason="body size"),
                    [("Content-Type", "image/jpeg")])

    def over_batch(self) -> Case:
        n = self.limits.max_images + self.rng.randint(1, 8)
        item = _b64s(self.valid["1x1.png"].data)
        return Case("over-batch", json.dumps({"images": [item] * n}).encode(),
                    Expect(frozenset({413}), reason="images per request"),
                    [("Content-Type", JSON_TYPE)])

    def at_limit(self) -> Case:
        """Just under (200) or just over (413) one limit; the answer comes from the limits."""
        kind = self.rng.choice(["bytes", "images", *sorted(self.limit_cases)])
        if kind == "bytes":  # a JPEG padded to exactly the limit: trailing bytes are ignored
            img = self.valid["photo0.jpg"]
            padded = Img(img.data + b"\0" * (self.limits.max_bytes - len(img.data)), "JPEG",
                         img.size)
            return self.raw("at-limit:bytes", padded, "image/jpeg")
        if kind == "images":
            images = [self.valid["1x1.png"]] * self.limits.max_images
            return self.json_case("at-limit:images", [_b64s(i.data) for i in images], images)
        images = self.limit_cases[kind]
        if len(images) == 1 and self.rng.random() < 0.5:
            return self.raw(f"at-limit:{kind}", images[0], "image/png")
        return self.json_case(f"at-limit:{kind}", {"images": [_b64s(i.data) for i in images]},
                              images)

    def route(self) -> Case:
        method, path, answer = self.rng.choice(ROUTE_CASES)
        case = self.raw(f"route:{method} {path[:40]}", self.pick(), "image/jpeg")
        case.method, case.path = method, path
        if answer:
            case.before_body = answer
        # nginx refuses a path it cannot decode with its own HTML page, MMS a path it does
        # not serve with its own pretty-printed JSON (documented).
        case.expect.json_body = path not in NGINX_HTML_400
        case.expect.one_line = answer != 404
        return case


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
    traceback_lines: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stopped_early: str = ""

    @property
    def five_xx(self) -> int:
        return sum(n for s, n in self.statuses.items() if s >= 500)

    @property
    def ok(self) -> bool:
        return (not self.failures and not self.restart_lines and not self.traceback_lines
                and not self.stopped_early and self.five_xx == 0
                and self.workers_before == self.workers_after and bool(self.workers_before))

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "sent": self.sent, "hostile": self.hostile, "valid": self.valid,
            "responses_5xx": self.five_xx, "failures": len(self.failures),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "workers_before": self.workers_before, "workers_after": self.workers_after,
            "restart_lines": self.restart_lines[:20],
            "traceback_lines": self.traceback_lines[:20], "seconds": round(self.seconds, 1),
            "stopped_early": self.stopped_early,
            "categories": dict(sorted(self.categories.items())),
            "first_failures": self.failures[:20],
        }


def _scan_logs(target: Target, marks: dict[str, int], result: Result) -> dict[str, int]:
    """Worker deaths and tracebacks logged since ``marks``; returns the new marks."""
    new_marks = target.log_marks()
    for line in target.logs_since(marks).splitlines():
        if RESTART_PATTERNS.search(line):
            result.restart_lines.append(line.strip()[:300])
        if TRACEBACK.search(line):
            result.traceback_lines.append(line.strip()[:300])
    return new_marks


def run_fuzz(target: Target, reference: Reference, limits: Limits, *, requests: int,
             seed: int, valid_every: int, max_seconds: float, pause: float = 0.0,
             photos: list[Path] = SAMPLE_PHOTOS,
             log: Callable[[str], None] = lambda line: None) -> Result:
    """``requests`` hostile requests plus a valid one every ``valid_every``, seeded; a pause of
    ``pause`` seconds after each keeps a shared machine usable."""
    rng = random.Random(seed)
    gen = Generator(rng, photos, limits, reference.pre.resize)
    result = Result(workers_before=sorted(target.worker_pids()))
    marks = target.log_marks()
    start = time.monotonic()
    while result.hostile < requests:
        if time.monotonic() - start > max_seconds:
            result.stopped_early = f"time limit {max_seconds} s after {result.sent} requests"
            break
        is_valid = valid_every > 0 and result.sent % valid_every == valid_every - 1
        case = gen.valid_case() if is_valid else gen.hostile_case()
        reply = target.request(case.method, case.path, case.body, case.headers)
        result.sent += 1
        result.valid += is_valid
        result.hostile += not is_valid
        result.statuses[reply.status] += 1
        result.categories[f"{case.category.split(':')[0]}->{reply.status}"] += 1
        problem = check_reply(reply, case.expect, reference)
        if problem:
            result.failures.append({"n": result.sent, "category": case.category,
                                    "expected": sorted(case.expect.statuses),
                                    "got": reply.status, "problem": problem[:300],
                                    "body_bytes": len(case.body)})
            log(f"#{result.sent} {case.category}: {problem[:300]}")
        if result.sent % 250 == 0:
            marks = _scan_logs(target, marks, result)
            log(f"{result.sent} sent, {result.five_xx} 5xx, {len(result.failures)} failures, "
                f"{len(result.traceback_lines)} tracebacks, {time.monotonic() - start:.0f} s")
            if sorted(target.worker_pids()) != result.workers_before:
                result.stopped_early = f"worker PIDs changed after {result.sent} requests"
                break
        if pause:
            time.sleep(pause)
    result.seconds = time.monotonic() - start
    time.sleep(2)  # let MMS flush its log
    result.workers_after = sorted(target.worker_pids())
    _scan_logs(target, marks, result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True,
                        help="artifact (manifest.json + model.pt): served and used as reference")
    parser.add_argument("--host-mms", action="store_true",
                        help="run python -m container_serve here instead of the image")
    parser.add_argument("--image", default=SERVE_IMAGE)
    parser.add_argument("--port", type=int, help="a server already listening on 127.0.0.1")
    parser.add_argument("--name-prefix", default="",
                        help="prefix of the container's name (a shared Docker daemon)")
    parser.add_argument("--memory", default="6g",
                        help="docker run --memory for the image ('' for none)")
    parser.add_argument("--requests", type=int, default=2000, help="hostile requests")
    parser.add_argument("--valid-every", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=3600,
                        help="stop (and fail) after this long")
    parser.add_argument("--pause", type=float, default=0.0,
                        help="seconds to wait after each request (a shared machine)")
    parser.add_argument("--ready-timeout", type=float, default=300)
    parser.add_argument("--max-bytes", type=int, default=Limits.max_bytes)
    parser.add_argument("--max-images", type=int, default=Limits.max_images)
    parser.add_argument("--max-pixels", type=int, default=Limits.max_pixels)
    parser.add_argument("--max-request-pixels", type=int, default=0,
                        help="0: the documented default, twice --max-pixels")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)

    limits = Limits(args.max_bytes, args.max_images, args.max_pixels, args.max_request_pixels)

    def log(line: str) -> None:
        print(f"fuzz: {line}", file=sys.stderr, flush=True)

    reference = Reference(args.model_dir)
    target = start_target(args, limits, SAMPLE_PHOTOS[0].read_bytes())
    log(f"{target.kind} on {HOST}:{target.port}, workers {sorted(target.worker_pids())}")
    try:
        result = run_fuzz(target, reference, limits, requests=args.requests, seed=args.seed,
                          valid_every=args.valid_every, max_seconds=args.max_seconds,
                          pause=args.pause, log=log)
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
