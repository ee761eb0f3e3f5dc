"""The toolkit's Transformer, with our functions bound and errors answered as one-line JSON.

Out of the box the toolkit answers 500 plus a Python traceback for unsupported types, bad
JSON or non-UTF-8 bodies, reads headers case-sensitively and uses request 0's headers for
every request of a batch. ``transform`` here fixes those; model loading stays the toolkit's
(``validate_and_initialize`` -> ``model_fn``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

from sagemaker_inference.transformer import Transformer

from container_serve import batch, batching, inference, startup_check
from container_serve.env_names import (
    ARTIFACT_GATE_ENV,
    BATCH_SIZE_ENV,
    MODEL_DIR_ENV,
    MULTI_MODEL_ENV,
    RUNTIME_DIR_ENV,
)
from container_serve.errors import ServeError, error_body, one_line
from container_serve.settings import ServeSettings
from container_serve.toolkit_patches import OwnFunctionsOnly
from model_artifact.manifest import ArtifactError

logger = logging.getLogger(__name__)
MODEL_NOT_LOADED = "model not loaded: the artifact failed its check; see the endpoint's log"


def _headers(context: Any, idx: int) -> dict[str, str]:
    """Request headers of request ``idx``, names lower-cased (HTTP names are case-free)."""
    props = context.request_processor[idx].get_request_properties() or {}
    return {str(k).lower(): v for k, v in props.items() if isinstance(v, str)}


def _response_type(context: Any, idx: int, status: HTTPStatus) -> str:
    """JSON Lines for an answered JSON Lines request; JSON otherwise (every error body)."""
    if status == HTTPStatus.OK and batch.is_jsonlines(_headers(context, idx).get("content-type")):
        return batch.JSONLINES
    return inference.JSON


# On every answer: how many requests MMS handed the worker together (1: not batched), so a
# client or a test can see batching at work (docs/serving-api.md, "GPU serving").
BATCH_HEADER = "X-Serve-Batch-Requests"


@dataclass(frozen=True)
class _Parsed:
    images: list[bytes]
    accept: str | None
    top_k: int
    abstain: bool


def _checked(prediction: inference.Prediction | ServeError) -> inference.Prediction:
    """A request's share of a batch: its Prediction, or the error its own images caused."""
    if isinstance(prediction, ServeError):
        raise prediction
    return prediction


def refuse_and_exit(exc: Exception) -> None:
    """Under ``serve`` (single-model mode), a worker that cannot load the model records why
    and ends; serve stops with that one line. The workers are the artifact check: a separate
    check process cost a third of the start-up CPU on 2 cores (bench/README.md). Exiting
    instead of raising keeps MMS's traceback of a dead worker out of the log (MMS would fork
    the worker again, to fail the same way). Outside serve this returns, and the caller
    raises."""
    single_model = ServeSettings()  # multi-model workers never get here; from_env may raise
    if not startup_check.record_refusal(startup_check.load_failure_reason(exc), single_model):
        return
    logging.shutdown()  # flush: os._exit skips it
    os._exit(1)


def mark_loaded() -> None:
    """The first worker to load the model (self-test passed) opens the port (serve waits for
    this file)."""
    if gate := os.environ.get(ARTIFACT_GATE_ENV):
        Path(gate).touch()


class ServeTransformer(OwnFunctionsOnly, Transformer):
    # Multi-model mode (container_serve/multi_model.py): the models this worker holds.
    _models: Any = None

    def validate_and_initialize(self, model_dir: str | None = None, context: Any = None) -> None:
        if os.environ.get(MULTI_MODEL_ENV) == "true":  # serve exports the parsed value
            self._initialize_multi_model()
            return
        # MMS is given an empty directory (see serve.py); the artifact's path comes from serve.
        model_dir = os.environ.get(MODEL_DIR_ENV) or model_dir
        if batching.replaced_at_start(int(os.environ.get(BATCH_SIZE_ENV) or 1), context):
            logger.info("MMS's start-up model: batching replaces it; not loading the model")
            return
        try:
            super().validate_and_initialize(model_dir=model_dir, context=context)
        except Exception as exc:
            refuse_and_exit(exc)
            raise
        mark_loaded()

    def _initialize_multi_model(self) -> None:
        """No model at start: each is loaded on its first invocation (multi_model.py)."""
        if self._initialized:
            return
        from container_serve.model_registry import Registry
        from container_serve.multi_model import WorkerModels

        self._validate_user_module_and_set_functions()
        self._models = WorkerModels(ServeSettings.from_env(),
                                    Registry(os.environ[RUNTIME_DIR_ENV]))
        self._initialized = True

    def own_functions(self) -> tuple[Callable[..., Any], ...]:
        return inference.model_fn, inference.input_fn, inference.predict_fn, inference.output_fn

    def transform(self, data: list[dict[str, Any]], context: Any) -> list[str]:
        # MMS batching (SERVE_BATCH_SIZE > 1) hands several requests at once: they share one
        # forward pass; each still gets its own answer or error.
        shared = self._shared_forward(data, context) if len(data) > 1 else {}
        responses = []
        for idx, request in enumerate(data):
            status, body = shared.get(idx) or self._outcome(
                lambda: self._handle_one(request, context, idx))  # noqa: B023 (called now)
            if status != HTTPStatus.OK:
                context.set_response_status(code=int(status), phrase=status.phrase, idx=idx)
            context.set_response_content_type(idx, _response_type(context, idx, status))
            context.set_response_header(idx, BATCH_HEADER, str(len(data)))
            responses.append(body)
        return responses

    @staticmethod
    def _outcome(work: Callable[[], Any]) -> tuple[HTTPStatus, Any]:
        """(200, what ``work`` returns), or the error status and its one-line JSON body."""
        try:
            return HTTPStatus.OK, work()
        except ServeError as exc:
            status, message = HTTPStatus(exc.status_code), exc.message
            logger.info("refused with %d: %s", status, message)
        except ArtifactError as exc:  # model_fn failed in initialize: the log says why;
            # the client is told only that, not the artifact's paths on this machine.
            logger.error(one_line(f"model not loaded: {exc}"))
            status, message = HTTPStatus.INTERNAL_SERVER_ERROR, MODEL_NOT_LOADED
        except Exception:  # a bug of ours: the client gets one line, the log the traceback
            logger.exception("inference failed")
            status, message = HTTPStatus.INTERNAL_SERVER_ERROR, "internal error; see the logs"
        return status, error_body(status, message)

    def _parsed(self, request: dict[str, Any], headers: dict[str, str],
                settings: ServeSettings) -> _Parsed:
        """What a request asks for, read and checked before its forward pass."""
        accept = headers.get("accept")
        inference.check_accept(accept)  # refuse before spending a forward pass
        attributes = headers.get(inference.CUSTOM_ATTRIBUTES)
        top_k = inference.parse_top_k(attributes, settings)
        abstain = inference.parse_abstain(attributes)
        images = self._input_fn(request.get("body"), headers.get("content-type"), settings)
        return _Parsed(images, accept, top_k, abstain)

    def _shared_forward(self, data: list[dict[str, Any]], context: Any
                        ) -> dict[int, tuple[HTTPStatus, str]]:
        """Answers, by index, for the image requests of a batch, from one forward pass; the
        others (JSON Lines, multi-model mode, a model that failed to load) are left to
        _handle_one."""
        status, _ = self._outcome(lambda: self.validate_and_initialize(
            model_dir=context.system_properties.get("model_dir"), context=context))
        if status != HTTPStatus.OK or self._models is not None:
            return {}
        answers: dict[int, tuple[HTTPStatus, str]] = {}
        parsed: dict[int, _Parsed] = {}
        settings = self._model.settings
        for idx, request in enumerate(data):
            headers = _headers(context, idx)
            if batch.is_jsonlines(headers.get("content-type")):
                continue
            status, value = self._outcome(
                lambda: self._parsed(request, headers, settings))  # noqa: B023
            if status == HTTPStatus.OK:
                parsed[idx] = value
            else:
                answers[idx] = status, value
        if not parsed:
            return answers
        status, shared = self._outcome(lambda: inference.predict_requests(
            [p.images for p in parsed.values()], self._model))
        for n, (idx, p) in enumerate(parsed.items()):
            if status != HTTPStatus.OK:  # the shared forward failed: so did its requests
                answers[idx] = status, shared
                continue
            answers[idx] = self._outcome(lambda: self._output_fn(
                _checked(shared[n]), p.accept, p.top_k, p.abstain))  # noqa: B023
        return answers

    def _handle_one(self, request: dict[str, Any], context: Any, idx: int) -> str:
        model_dir = context.system_properties.get("model_dir")
        self.validate_and_initialize(model_dir=model_dir, context=context)
        headers = _headers(context, idx)
        served = self._model if self._models is None else self._models.served(headers)
        if batch.is_jsonlines(headers.get("content-type")):  # batch transform's JSON Lines
            handlers = batch.Handlers(self._input_fn, self._predict_fn, self._output_fn)
            return batch.transform(request.get("body"), headers, served, handlers)
        p = self._parsed(request, headers, served.settings)
        prediction = self._predict_fn(p.images, served)
        return self._output_fn(prediction, p.accept, p.top_k, p.abstain)
