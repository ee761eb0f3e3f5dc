"""Every environment knob the serving image reads, parsed and checked in one place (the
names: container_serve.env_names).

``serve`` parses them once at start (a bad value stops the container with the variable's
name) and exports the resolved values, so each MMS worker computes exactly the same settings.
The knobs are documented in docs/serving-api.md.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from container_serve.env_names import (
    ASYNC_ENV,
    BATCH_DELAY_MS_ENV,
    BATCH_SIZE_ENV,
    BATCH_STRICT_ENV,
    CALIBRATION_ENV,
    DEVICE_ENV,
    GRAPH_ENV,
    MAX_IMAGES_ENV,
    MAX_PAYLOAD_MB_ENV,
    MAX_PIXELS_ENV,
    MAX_REQUEST_BYTES_ENV,
    MAX_REQUEST_PIXELS_ENV,
    MODELS_MEMORY_ENV,
    MULTI_MODEL_ENV,
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
# SageMaker asynchronous inference (SERVE_ASYNC=true): requests up to 1 GB, processed for up
# to one hour (InvokeEndpointAsync's InvocationTimeoutSeconds allows 3600 s). The defaults
# under SERVE_ASYNC; SAGEMAKER_MAX_PAYLOAD_IN_MB, SERVE_MAX_REQUEST_BYTES and
# SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS still override them. Decoding stays bounded by the
# pixel limits, which do not change: the bytes of a large photo grow, not its pixels.
ASYNC_MAX_REQUEST_BYTES = 1024 * 1024 * 1024
ASYNC_TIMEOUT_SECONDS = 3600
FLAG_VALUES = {"true": True, "1": True, "false": False, "0": False, "": False}
# auto: fp32 graphs, and the artifact's bf16 package on a CPU with AMX where training measured
# it agreeing with fp32 (model_artifact.compiled); fp32: never bf16; int8: the int8 variant.
PRECISIONS = ("auto", "fp32", "int8")
GRAPHS = ("auto", "compiled", "frozen", "eager")
DEVICES = ("auto", "cpu", "cuda")
# Batching defaults per device (docs/serving-api.md, "GPU serving"). CPU: one request per
# forward, what the CPU workers and their thread counts are tuned for (a batch there costs its
# images' time anyway). CUDA: a forward of 8 images costs little more than one of 1, so
# concurrent requests share it; 5 ms is what a lone request may wait for company.
BATCH_DEFAULTS = {"cpu": (1, 5), "cuda": (8, 5)}
MIB = 1024 * 1024  # SageMaker's "MB" in MaxPayloadInMB and SAGEMAKER_MAX_PAYLOAD_IN_MB
# CreateTransformJob refuses MaxPayloadInMB above 100, and MaxConcurrentTransforms x
# MaxPayloadInMB above 100.
TRANSFORM_PAYLOAD_LIMIT_MB = 100


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


def _flag(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    """true/1 or false/0 (any case); unset or blank gives ``default``."""
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in FLAG_VALUES:
        raise ServeSettingsError(f"{name}={raw!r} must be true or false")
    return FLAG_VALUES[raw]


def nvidia_devices() -> bool:
    """An NVIDIA GPU's device node is here (/dev/nvidia0, ...: the driver, or the container
    runtime's mount of it)."""
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def _torch_sees_cuda() -> bool:
    """torch.cuda.is_available(), asked only where an NVIDIA device exists: serve parses the
    settings in its entry process, which otherwise never imports torch (seconds at start)."""
    if not nvidia_devices():
        return False
    import torch

    return torch.cuda.is_available()


def resolve_device(requested: str, cuda_available: Callable[[], bool] = _torch_sees_cuda) -> str:
    """auto -> cuda when torch sees a GPU, else cpu; cuda without one is refused (a deployer
    who asks for the GPU must not silently get the CPU)."""
    if requested == "auto":
        return "cuda" if cuda_available() else "cpu"
    if requested == "cuda" and not cuda_available():
        raise ServeSettingsError(f"{DEVICE_ENV}=cuda but torch sees no CUDA device here")
    return requested


def _batching(env: Mapping[str, str], device: str, multi_model: bool) -> tuple[int, int]:
    size, delay = BATCH_DEFAULTS[device]
    size = _int(env, BATCH_SIZE_ENV, 1 if multi_model else size)
    if multi_model and size > 1:  # one batch may name several models
        raise ServeSettingsError(f"{BATCH_SIZE_ENV}={size}: batching is not available in "
                                 "multi-model mode")
    return size, _int(env, BATCH_DELAY_MS_ENV, delay, minimum=0)


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
    asynchronous: bool = False
    calibration: bool = True  # apply the manifest's temperature (when it has one)
    batch_strict: bool = False  # JSON Lines: a bad record fails the request (no error line)
    multi_model: bool = False  # the /models API (container_serve/management.py)
    models_memory_bytes: int = 0  # multi-model memory budget; 0: from the machine
    device: str = "cpu"  # resolved: cpu | cuda (SERVE_DEVICE=auto is resolved by from_env)
    batch_size: int = BATCH_DEFAULTS["cpu"][0]  # requests per forward pass (MMS batching)
    batch_delay_ms: int = BATCH_DEFAULTS["cpu"][1]  # MMS's max_batch_delay

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None,
                 cuda_available: Callable[[], bool] = _torch_sees_cuda) -> ServeSettings:
        env = os.environ if env is None else env
        multi_model = _flag(env, MULTI_MODEL_ENV)
        device = resolve_device(_choice(env, DEVICE_ENV, DEVICES), cuda_available)
        batch_size, batch_delay_ms = _batching(env, device, multi_model)
        asynchronous = _flag(env, ASYNC_ENV)
        default = cls(max_request_bytes=ASYNC_MAX_REQUEST_BYTES,
                      timeout_seconds=ASYNC_TIMEOUT_SECONDS) if asynchronous else cls()
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
            asynchronous=asynchronous,
            calibration=_flag(env, CALIBRATION_ENV, default.calibration),
            batch_strict=_flag(env, BATCH_STRICT_ENV),
            multi_model=multi_model,
            models_memory_bytes=_int(env, MODELS_MEMORY_ENV, 0, minimum=0),
            device=device,
            batch_size=batch_size,
            batch_delay_ms=batch_delay_ms,
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
            ASYNC_ENV: str(self.asynchronous).lower(),
            CALIBRATION_ENV: str(self.calibration).lower(),
            BATCH_STRICT_ENV: str(self.batch_strict).lower(),
            MULTI_MODEL_ENV: str(self.multi_model).lower(),
            MODELS_MEMORY_ENV: str(self.models_memory_bytes),
            DEVICE_ENV: self.device,
            BATCH_SIZE_ENV: str(self.batch_size),
            BATCH_DELAY_MS_ENV: str(self.batch_delay_ms),
            # OpenMP/MKL pools outside torch.set_num_threads follow the same budget.
            OMP_THREADS_ENV: str(self.threads_per_worker),
        }

    def execution_parameters(self) -> dict[str, int | str]:
        """What GET /execution-parameters tells SageMaker's batch agent (a transform job that
        does not set these itself uses them).

        - BatchStrategy SingleRecord: one image per request. A record costs a forward pass
          (tens of ms and more) against about a millisecond of HTTP; the compiled graph runs a
          batch image by image anyway (model_artifact.compiled), and a multi-record request
          of a few MB of thumbnails would run past the model server's time-out. MultiRecord
          still works when a job asks for it (container_serve.batch).
        - MaxPayloadInMB: the request limit in whole MiB (at least 1), so that any record the
          real-time endpoint takes fits in one request.
        - MaxConcurrentTransforms: one request per worker (a worker serves one at a time; more
          would only queue), times the batch size when batching is on; fewer when SageMaker's
          cap on concurrency x payload (100 MB) demands: the payload must hold the largest
          record, fewer requests in flight only cost time.
        """
        payload_mb = max(1, min(self.max_request_bytes // MIB, TRANSFORM_PAYLOAD_LIMIT_MB))
        # With batching (SERVE_BATCH_SIZE > 1) a worker takes that many requests at once.
        in_flight = self.workers * self.batch_size
        concurrent = max(1, min(in_flight, TRANSFORM_PAYLOAD_LIMIT_MB // payload_mb))
        return {"MaxConcurrentTransforms": concurrent, "BatchStrategy": "SingleRecord",
                "MaxPayloadInMB": payload_mb}
