"""The toolkit's Transformer, with our functions bound and errors answered as one-line JSON.

Out of the box the toolkit answers 500 plus a Python traceback for unsupported types, bad
JSON or non-UTF-8 bodies, reads headers case-sensitively and uses request 0's headers for
every request of a batch. ``transform`` here fixes those; model loading stays the toolkit's
(``validate_and_initialize`` -> ``model_fn``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from sagemaker_inference.transformer import Transformer

from container_serve import inference
from container_serve.env_names import ARTIFACT_GATE_ENV, MODEL_DIR_ENV
from container_serve.errors import ServeError, error_body, one_line
from container_serve.toolkit_patches import OwnFunctionsOnly
from model_artifact.manifest import ArtifactError

logger = logging.getLogger(__name__)
MODEL_NOT_LOADED = "model not loaded: the artifact failed its check; see the endpoint's log"


def _headers(context: Any, idx: int) -> dict[str, str]:
    """Request headers of request ``idx``, names lower-cased (HTTP names are case-free)."""
    props = context.request_processor[idx].get_request_properties() or {}
    return {str(k).lower(): v for k, v in props.items() if isinstance(v, str)}


GATE_TIMEOUT_SECONDS = 600


def wait_for_artifact_check(timeout: float = GATE_TIMEOUT_SECONDS) -> None:
    """serve checks the artifact in a child process while MMS starts its workers, so that the
    workers' slow imports (torch, torchvision: seconds each) overlap the check. A worker loads
    the model only once the check has passed; if it fails, serve stops MMS and the worker never
    gets here or is stopped while it waits."""
    gate = os.environ.get(ARTIFACT_GATE_ENV)
    if not gate:
        return
    deadline = time.monotonic() + timeout
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise ArtifactError(f"serve's artifact check did not pass within {timeout:g} s")
        time.sleep(0.05)


class ServeTransformer(OwnFunctionsOnly, Transformer):
    def validate_and_initialize(self, model_dir: str | None = None, context: Any = None) -> None:
        # MMS is given an empty directory (see serve.py); the artifact's path comes from serve.
        model_dir = os.environ.get(MODEL_DIR_ENV) or model_dir
        wait_for_artifact_check()
        super().validate_and_initialize(model_dir=model_dir, context=context)

    def own_functions(self) -> tuple[Callable[..., Any], ...]:
        return inference.model_fn, inference.input_fn, inference.predict_fn, inference.output_fn

    def transform(self, data: list[dict[str, Any]], context: Any) -> list[str]:
        responses = []
        for idx, request in enumerate(data):
            status, body = HTTPStatus.OK, ""
            try:
                body = self._handle_one(request, context, idx)
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
            if status != HTTPStatus.OK:
                body = error_body(status, message)
                context.set_response_status(code=int(status), phrase=status.phrase, idx=idx)
            context.set_response_content_type(idx, inference.JSON)
            responses.append(body)
        return responses

    def _handle_one(self, request: dict[str, Any], context: Any, idx: int) -> str:
        model_dir = context.system_properties.get("model_dir")
        self.validate_and_initialize(model_dir=model_dir, context=context)
        served = self._model
        headers = _headers(context, idx)
        accept = headers.get("accept")
        inference.check_accept(accept)  # refuse before spending a forward pass
        top_k = inference.parse_top_k(headers.get(inference.CUSTOM_ATTRIBUTES), served.settings)
        abstain = inference.parse_abstain(headers.get(inference.CUSTOM_ATTRIBUTES))
        images = self._input_fn(request.get("body"), headers.get("content-type"), served.settings)
        prediction = self._predict_fn(images, served)
        return self._output_fn(prediction, accept, top_k, abstain)
