"""MMS's own batching (SERVE_BATCH_SIZE > 1): MMS hands a worker up to that many requests at
once, waiting up to SERVE_BATCH_DELAY_MS after the first; the handler gives them one forward
pass (transformer.ServeTransformer.transform, inference.predict_requests).

Why MMS's batching and not a batcher thread in the handler: an MMS worker is one Python process
that MMS gives one job at a time, so a thread inside it never sees a second request to batch
with; MMS's queue is the only place concurrent requests meet. Why a registration: MMS 1.1.11
registers the model named on its command line (which the toolkit always passes) with batch
size 1 and no way to change it; so with batching on, that model starts with one worker
(MMS_DEFAULT_WORKERS_PER_MODEL=1: MMS reads 0 as "one per CPU"), which does not load the model
(``replaced_at_start``), and ``register`` replaces it through MMS's management API (on its Unix
socket) with the same name and directory, the batch size and the workers. MMS's /invocations
then asks for a model name (it only defaults to a start-up model): nginx sends /invocations to
/predictions/model instead (front.py).
"""

from __future__ import annotations

import json
import time
import urllib.parse
from typing import Any

from container_serve.env_names import MMS_DEFAULT_WORKERS_ENV
from container_serve.front import BATCHED_MODEL
from container_serve.health import UnixConnection
from container_serve.settings import ServeSettings

MODEL_NAME = BATCHED_MODEL  # sagemaker_inference.model_server.DEFAULT_MMS_MODEL_NAME
REGISTER_TIMEOUT_SECONDS = 60.0


class BatchingError(RuntimeError):
    """MMS did not take the batched registration; the message says what it answered."""


def mms_env(settings: ServeSettings) -> dict[str, str]:
    """For MMS's process: the start-up model gets one worker when ``register`` replaces it."""
    return {MMS_DEFAULT_WORKERS_ENV: "1"} if settings.batch_size > 1 else {}


def replaced_at_start(settings_batch_size: int, context: Any) -> bool:
    """True in the worker of MMS's start-up model when batching will replace that model: it
    must not load the model (seconds of CPU, memory or a GPU context for nothing)."""
    properties = getattr(context, "system_properties", None) or {}
    return settings_batch_size > 1 and properties.get("batch_size") == 1


def registration_query(settings: ServeSettings, model_url: str) -> str:
    return urllib.parse.urlencode({
        "url": model_url, "model_name": MODEL_NAME, "batch_size": settings.batch_size,
        "max_batch_delay": settings.batch_delay_ms, "initial_workers": settings.workers,
        "response_timeout": settings.timeout_seconds, "synchronous": "false"})


def _call(socket_path: str, method: str, path: str) -> tuple[int, str]:
    connection = UnixConnection(socket_path, timeout=30)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        body = response.read().decode("utf-8", "replace")
    finally:
        connection.close()
    try:
        message = str(json.loads(body).get("status") or body)
    except (ValueError, AttributeError):
        message = body
    return response.status, " ".join(message.split())


def _unregister_startup_model(socket_path: str, timeout: float) -> None:
    """Wait for the management socket, then remove the worker-less start-up model."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, message = _call(socket_path, "DELETE", f"/models/{MODEL_NAME}")
        except OSError as exc:  # MMS not listening yet
            status, message = 0, f"{type(exc).__name__}: {exc}"
        if status == 200:
            return
        if time.monotonic() > deadline:
            raise BatchingError(f"cannot unregister MMS's start-up model: {status} {message}")
        time.sleep(0.2)


def register(socket_path: str, settings: ServeSettings, model_url: str,
             timeout: float = REGISTER_TIMEOUT_SECONDS) -> str:
    """Replace MMS's start-up model with a batched one; returns MMS's answer (one line)."""
    _unregister_startup_model(socket_path, timeout)
    status, message = _call(socket_path, "POST",
                            f"/models?{registration_query(settings, model_url)}")
    if status not in (200, 202):
        raise BatchingError(f"MMS refused the batched registration: {status} {message}")
    return message
