"""Every environment knob the serving image reads, parsed and checked in one place (the
names: container_serve.env_names).

``serve`` parses them once at start (a bad value stops the container with the variable's
name) and exports the resolved values, so each MMS worker computes exactly the same settings.
The knobs are documented in docs/serving-api.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from container_serve.env_names import (
    CALIBRATION_ENV,
    GRAPH_ENV,
    MAX_IMAGES_ENV,
    MAX_PAYLOAD_MB_ENV,
    MAX_PIXELS_ENV,
    MAX_REQUEST_BYTES_ENV,
    MAX_REQUEST_PIXELS_ENV,
    OMP_THREADS_ENV,
    PORT_ENV,
    PRECISION_ENV,
    RUNTIME_DIR_ENV,
    THREADS_ENV,
    TIMEOUT_SECONDS_ENV,
    TOP_K_ENV,
    TOP_K_MAX_ENV,
    WORKERS_ENV,
)
from model_artifact.preprocess import DEFAULT_MAX_PIXELS

# MMS's own request limit when nobody raises it; matches SageMaker's ~6 MB real-time limit.
MMS_DEFAULT_MAX_REQUEST_BYTES = 6_553_500
# Pixels one request may decode and resize, summed over its images: a request costs at most
# about twice the largest single image.
REQUEST_PIXELS_PER_IMAGE_LIMIT = 2
PRECISIONS = ("fp32", "int8")
GRAPHS = ("auto", "compiled", "frozen", "eager")


class ServeSettingsError(ValueError):
    """An environment variable has a value we cannot use; the message names it."""


def available_cpus() -> int:
    """CPUs this process may use: affinity mask, capped by a cgroup v2 quota (containers)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = cpus or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return cpus


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return choices[0]
    if raw not in choices:
        raise ServeSettingsError(f"{name}={raw!r} must be one of {', '.join(choices)}")
    return raw


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in ("true", "false"):
        raise ServeSettingsError(f"{name}={raw!r} must be true or false")
    return raw == "true"


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ServeSettingsError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ServeSettingsError(f"{name}={value} must be at least {minimum}")
    return value


@dataclass(frozen=True)
class ServeSettings:
    """The serving knobs. The field defaults are the documented defaults; ``from_env`` derives
    only what depends on the machine or on another knob (workers, threads, request limits)."""

    port: int = 8080
    workers: int = 1
    threads_per_worker: int = 1
    timeout_seconds: int = 60
    max_request_bytes: int = MMS_DEFAULT_MAX_REQUEST_BYTES
    max_images: int = 16
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_request_pixels: int = REQUEST_PIXELS_PER_IMAGE_LIMIT * DEFAULT_MAX_PIXELS
    top_k: int = 5
    top_k_max: int = 100
    runtime_dir: str | None = None
    precision: str = PRECISIONS[0]
    graph: str = GRAPHS[0]
    calibration: bool = True  # apply the manifest's temperature (when it has one)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServeSettings:
        env = os.environ if env is None else env
        default = cls()
        cpus = available_cpus()
        workers = _int(env, WORKERS_ENV, cpus)
        # One worker per CPU by default; threads share what is left so that
        # workers x threads never oversubscribes the CPUs (oversubscription costs 2-3x).
        threads = _int(env, THREADS_ENV, max(1, cpus // workers))
        max_payload_mb = _int(env, MAX_PAYLOAD_MB_ENV, 0, minimum=0)
        default_bytes = max_payload_mb * 1024 * 1024 or default.max_request_bytes
        top_k_max = _int(env, TOP_K_MAX_ENV, default.top_k_max)
        max_pixels = _int(env, MAX_PIXELS_ENV, default.max_pixels)
        settings = cls(
            port=_int(env, PORT_ENV, default.port),
            workers=workers,
            threads_per_worker=threads,
            timeout_seconds=_int(env, TIMEOUT_SECONDS_ENV, default.timeout_seconds),
            max_request_bytes=_int(env, MAX_REQUEST_BYTES_ENV, default_bytes),
            max_images=_int(env, MAX_IMAGES_ENV, default.max_images),
            max_pixels=max_pixels,
            max_request_pixels=_int(env, MAX_REQUEST_PIXELS_ENV,
                                    REQUEST_PIXELS_PER_IMAGE_LIMIT * max_pixels),
            top_k=min(_int(env, TOP_K_ENV, default.top_k), top_k_max),
            top_k_max=top_k_max,
            runtime_dir=env.get(RUNTIME_DIR_ENV) or default.runtime_dir,
            precision=_choice(env, PRECISION_ENV, PRECISIONS),
            graph=_choice(env, GRAPH_ENV, GRAPHS),
            calibration=_bool(env, CALIBRATION_ENV, default.calibration),
        )
        if settings.port > 65535:
            raise ServeSettingsError(f"{PORT_ENV}={settings.port} is not a TCP port")
        return settings

    def worker_env(self) -> dict[str, str]:
        """The resolved values, exported for MMS and its workers (they re-read them)."""
        return {
            PORT_ENV: str(self.port),
            WORKERS_ENV: str(self.workers),
            THREADS_ENV: str(self.threads_per_worker),
            TIMEOUT_SECONDS_ENV: str(self.timeout_seconds),
            MAX_REQUEST_BYTES_ENV: str(self.max_request_bytes),
            MAX_IMAGES_ENV: str(self.max_images),
            MAX_PIXELS_ENV: str(self.max_pixels),
            MAX_REQUEST_PIXELS_ENV: str(self.max_request_pixels),
            TOP_K_ENV: str(self.top_k),
            TOP_K_MAX_ENV: str(self.top_k_max),
            PRECISION_ENV: self.precision,
            GRAPH_ENV: self.graph,
            CALIBRATION_ENV: str(self.calibration).lower(),
            # OpenMP/MKL pools outside torch.set_num_threads follow the same budget.
            OMP_THREADS_ENV: str(self.threads_per_worker),
        }
