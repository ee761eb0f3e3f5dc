"""An honest /ping: 200 only while every configured MMS worker has the model loaded.

MMS 1.1.11 answers its own /ping with HTTP 200 in every case and puts the truth in the body:
``{"status": "Unhealthy"}`` while no worker has the model, ``"Partial Healthy"`` while some
but fewer than the configured number have it (before they have all loaded it, or after a
worker died). MMS 1.1.11 never restarts a killed worker (docs/RELIABILITY.md), so "Partial"
after start is permanent: the endpoint would serve at a fraction of its capacity, unseen.
SageMaker reads only the status code. nginx sends /ping here instead (a Unix socket in the
runtime dir, served by a thread of the long-lived ``serve`` process); this asks MMS, moves
serve's state (container_serve/lifecycle.py) and answers from it: anything but READY ("Healthy"
from MMS while serve is neither stopping nor failed) is a JSON 503 with the reason, so
SageMaker replaces the instance.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import socket
import socketserver
import threading
from typing import Any

from container_serve.errors import error_body
from container_serve.lifecycle import MMS_HEALTHY, Lifecycle

HEALTH_SOCKET = "health.sock"


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def mms_status(mms_socket: str, timeout: float = 5.0) -> str:
    """MMS's own /ping body status ("Healthy", "Partial Healthy", "Unhealthy"), or why none."""
    connection = UnixConnection(mms_socket, timeout)
    try:
        connection.request("GET", "/ping")
        response = connection.getresponse()
        body = response.read()
    except OSError as exc:
        return f"no answer from multi-model-server ({type(exc).__name__})"
    finally:
        connection.close()
    try:
        return str(json.loads(body)["status"])
    except (ValueError, KeyError, TypeError):
        return f"unreadable /ping answer from multi-model-server ({response.status})"


def ping(mms_socket: str, lifecycle: Lifecycle) -> tuple[int, str]:
    """Ask MMS while the port is open, then answer from serve's state (lifecycle.py)."""
    if not lifecycle.is_final():
        lifecycle.observe_mms(mms_status(mms_socket))
    code, reason = lifecycle.ping()
    if code == 200:
        return code, json.dumps({"status": MMS_HEALTHY})
    return code, error_body(code, reason)


def send_json(handler: http.server.BaseHTTPRequestHandler, code: int, body: str) -> None:
    """Answer ``code`` with the JSON ``body`` (the Unix-socket services nginx proxies to)."""
    data = body.encode()
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # http.server calls do_<METHOD>
        send_json(self, *ping(self.server.mms_socket, self.server.lifecycle))

    def log_message(self, format: str, *args: Any) -> None:  # /ping every few seconds: quiet
        pass

    def address_string(self) -> str:  # a Unix socket has no client address
        return "nginx"


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    mms_socket = ""
    lifecycle: Lifecycle


def start(runtime_dir: str, mms_socket: str, lifecycle: Lifecycle) -> str:
    """Serve /ping on a Unix socket in runtime_dir from a daemon thread; return its path."""
    path = os.path.join(runtime_dir, HEALTH_SOCKET)
    if os.path.exists(path):
        os.unlink(path)
    server = _Server(path, _Handler)
    server.mms_socket = mms_socket
    server.lifecycle = lifecycle
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return path
