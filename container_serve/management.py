"""Multi-model mode: SageMaker's model management API, answered by the serve process.

multi-model-server runs each of *its* models in its own worker processes, so MMS's own
per-model API could never let models share memory (a backbone) in one worker. So MMS serves
one model, our handler, and this module answers the multi-model container contract in front
of it (nginx, container_serve/front.py, sends these routes to its Unix socket):

    POST   /models            {"model_name": N, "url": DIR}  200 | 400 | 409 loaded | 507 memory
    GET    /models[?next_page_token=T&limit=L]  {"models": [{"modelName", "modelUrl"}], ...}
    GET    /models/<name>     {"modelName", "modelUrl"} | 404
    DELETE /models/<name>     200 | 404

A load verifies the artifact (manifest, classes, weights sha256) and the memory estimate
before it answers 200, then records the model (container_serve/model_registry.py); each
worker loads it on its first invocation of it (POST /models/<name>/invoke, which nginx
sends to MMS) and drops models unloaded since.
"""

from __future__ import annotations

import http.server
import json
import os
import socketserver
import sys
import threading
import uuid
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from container_serve.errors import (
    BadRequest,
    InsufficientMemory,
    ModelConflict,
    ModelNotFound,
    ServeError,
    error_body,
)
from container_serve.health import send_json
from container_serve.model_registry import (
    RESIDENT_FACTOR,
    Registration,
    Registry,
    committed_bytes,
    head_file_bytes,
    memory_refusal,
    verify_artifact,
)
from container_serve.settings import ServeSettings
from model_artifact.manifest import ArtifactError

MANAGEMENT_SOCKET = "models.sock"
PAGE_SIZE = 100  # models per GET /models page (multi-model-server's own maximum)
MAX_BODY_BYTES = 64 * 1024


def log(message: str) -> None:
    print(f"serve: {message}", file=sys.stderr, flush=True)


class ModelsApi:
    """The routes above, as (status, JSON body) from (method, path, body)."""

    def __init__(self, registry: Registry, settings: ServeSettings) -> None:
        self.registry = registry
        self.settings = settings
        self.lock = threading.Lock()  # a load's checks and its record happen as one

    def answer(self, method: str, target: str, body: bytes) -> tuple[int, str]:
        parts = urlsplit(target)
        try:
            if parts.path == "/models" and method == "GET":
                return 200, self.list(parse_qs(parts.query))
            if parts.path == "/models" and method == "POST":
                return 200, self.load(body)
            if parts.path.startswith("/models/") and len(parts.path) > len("/models/"):
                name = unquote(parts.path[len("/models/"):])  # the name, as the URL encodes it
                if method == "GET":
                    return 200, self.describe(name)
                if method == "DELETE":
                    return 200, self.unload(name)
            raise _NotAllowed(f"{method} {parts.path} is not part of the multi-model API")
        except ServeError as exc:
            return int(exc.status), error_body(exc.status, exc.message)

    def list(self, query: dict[str, list[str]]) -> str:
        start = _query_int(query, "next_page_token", 0)
        limit = min(_query_int(query, "limit", PAGE_SIZE), PAGE_SIZE) or PAGE_SIZE
        models = self.registry.all()
        page: dict[str, Any] = {"models": [m.describe() for m in models[start:start + limit]]}
        if start + limit < len(models):
            page["nextPageToken"] = str(start + limit)
        return json.dumps(page)

    def describe(self, name: str) -> str:
        registration = self.registry.lookup(name)
        if registration is None:
            raise ModelNotFound(f"model {name!r} is not loaded")
        return json.dumps(registration.describe())

    def unload(self, name: str) -> str:
        with self.lock:
            if not self.registry.remove(name):
                raise ModelNotFound(f"model {name!r} is not loaded")
        log(f"unloaded model {name!r}")
        return json.dumps({"status": f"model {name!r} unloaded"})

    def load(self, body: bytes) -> str:
        name, url = _load_request(body)
        with self.lock:
            if self.registry.lookup(name) is not None:
                raise ModelConflict(f"model {name!r} is already loaded; unload it first")
            try:
                manifest, size = verify_artifact(url)
            except (ArtifactError, OSError) as exc:
                raise BadRequest(f"cannot load model {name!r}: {exc}") from None
            workers = self.settings.workers  # every worker holds its own copy
            # Workers share backbones only in the fp32 TorchScript/eager forms (resident_models).
            shares = self.settings.precision != "int8" and self.settings.graph != "compiled"
            head = head_file_bytes(url, manifest) if shares else 0
            new = Registration(name, url, uuid.uuid4().hex, RESIDENT_FACTOR * size * workers,
                               manifest.backbone_sha256, RESIDENT_FACTOR * head * workers)
            loaded = self.registry.all()
            committed = committed_bytes(loaded)
            need = committed_bytes([*loaded, new]) - committed
            refusal = memory_refusal(name, need, committed, self.settings.models_memory_bytes)
            if refusal is not None:
                raise InsufficientMemory(refusal)
            self.registry.add(new)
        log(f"loaded model {name!r} from {url}: {manifest.num_classes} classes, "
            f"about {need >> 20} MiB in {self.settings.workers} worker(s)")
        return json.dumps({"status": f"model {name!r} loaded", "modelName": name,
                           "modelUrl": url})


class _NotAllowed(ServeError):
    status = HTTPStatus.METHOD_NOT_ALLOWED


def _query_int(query: dict[str, list[str]], key: str, default: int) -> int:
    raw = (query.get(key) or [""])[-1].strip()
    if not raw:
        return default
    if not raw.isdigit():
        raise BadRequest(f"{key} must be a non-negative integer, got {raw[:40]!r}")
    return int(raw)


def _load_request(body: bytes) -> tuple[str, str]:
    """{"model_name": str, "url": str} -> (name, url); BadRequest otherwise."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BadRequest('the body must be JSON: {"model_name": ..., "url": ...}') from None
    if not isinstance(doc, dict):
        raise BadRequest('the body must be a JSON object: {"model_name": ..., "url": ...}')
    name, url = doc.get("model_name"), doc.get("url")
    if not isinstance(name, str) or not name.strip():
        raise BadRequest("model_name must be a non-empty string")
    if not isinstance(url, str) or not os.path.isabs(url):
        raise BadRequest("url must be the absolute path of the unpacked model directory")
    return name, url


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            code, body = 413, error_body(413, f"a load request is at most {MAX_BODY_BYTES} bytes")
            self.close_connection = True
        else:
            code, body = self.server.api.answer(self.command, self.path, self.rfile.read(length))
        send_json(self, code, body)

    do_GET = do_POST = do_DELETE = do_PUT = _serve  # http.server calls do_<METHOD>

    def log_message(self, format: str, *args: Any) -> None:  # load/unload log their own line
        pass

    def address_string(self) -> str:  # a Unix socket has no client address
        return "nginx"


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    api: ModelsApi


def start(runtime_dir: str, settings: ServeSettings) -> str:
    """Serve the management API on a Unix socket in runtime_dir from a daemon thread."""
    path = os.path.join(runtime_dir, MANAGEMENT_SOCKET)
    if os.path.exists(path):
        os.unlink(path)
    server = _Server(path, _Handler)
    server.api = ModelsApi(Registry(runtime_dir), settings)
    threading.Thread(target=server.serve_forever, name="models-api", daemon=True).start()
    return path
