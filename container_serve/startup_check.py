"""The serving self-test: before a worker (or the ``check`` command) reports ready, the graph
it will serve runs the artifact's held-out inputs (model_artifact.self_test) on this CPU with
this worker's thread count, and must answer as the training job's fp32 model did.

On failure: with ``SERVE_GRAPH=auto`` a compiled variant that fails is replaced by the frozen
TorchScript graph (self-tested in turn), with one warning line; any other graph that fails
(``SERVE_GRAPH=compiled``, ``frozen``, ``eager``, ``SERVE_PRECISION=int8``) is refused: the
worker writes the reason to the runtime dir, where serve reads it (lifecycle.read_refusal) and
stops with it. docs/serving-api.md, "Start-up self-test", is the contract.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from container_serve.env_names import RUNTIME_DIR_ENV
from container_serve.lifecycle import SELF_TEST_REFUSAL_FILE
from container_serve.settings import ServeSettings, ServeSettingsError
from model_artifact.manifest import ArtifactError, Manifest
from model_artifact.self_test import SelfTestError, load_self_test, run_self_test

logger = logging.getLogger(__name__)
Fallback = Callable[[], tuple[nn.Module, Any, str]]  # inference._fp32_model's answer


def load_failure_reason(exc: Exception) -> str:
    """Why a model could not be loaded, in one line (after ``cannot serve DIR: ``)."""
    if isinstance(exc, (ArtifactError, ServeSettingsError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"  # torch errors while building or running the network


def record_refusal(reason: str, settings: ServeSettings) -> bool:
    """Leave the reason where serve looks for it (only under serve: it sets the runtime dir);
    True if recorded. Not in multi-model mode: there a refused model fails its own
    invocations, and the server goes on serving the others."""
    runtime_dir = os.environ.get(RUNTIME_DIR_ENV)
    if not runtime_dir or settings.multi_model:
        return False
    path = Path(runtime_dir) / SELF_TEST_REFUSAL_FILE
    partial = path.with_name(f"{path.name}.{os.getpid()}")
    try:
        partial.write_text(reason.replace("\n", " ") + "\n")
        os.replace(partial, path)  # whole, or not at all: serve may read it at any moment
    except OSError as exc:
        logger.error("cannot record the refusal in %s: %s", runtime_dir, exc)
        return False
    return True


def _tested(model: nn.Module, graph: str, loaded: tuple[Any, Any]) -> None:
    result = run_self_test(model, graph, *loaded)
    logger.info("self-test passed on the %s graph: %d held-out inputs, logits within %.2g of "
                "training's (allowed %.2g), %.2f s", graph, result.images,
                result.max_difference, result.allowed, result.seconds)


def self_tested(model_dir: str, manifest: Manifest, model: nn.Module, graph: str,
                settings: ServeSettings, fallback: Fallback) -> tuple[nn.Module, str]:
    """The model to serve and its graph's name, once it has passed the self-test; SelfTestError
    (recorded for serve) when nothing that may be served passes."""
    loaded = load_self_test(model_dir, manifest)
    if loaded is None:
        logger.info("no self-test ran: the artifact carries no held-out inputs (written before "
                    "the manifest's self_test field)")
        return model, graph
    try:
        _tested(model, graph, loaded)
        return model, graph
    except SelfTestError as exc:
        if not graph.startswith("compiled") or settings.graph != "auto":
            record_refusal(str(exc), settings)
            raise
        logger.warning("compiled variant not used (%s); serving the TorchScript graph", exc)
    model, _, graph = fallback()
    try:
        _tested(model, graph, loaded)
    except SelfTestError as exc:
        record_refusal(str(exc), settings)
        raise
    return model, graph
