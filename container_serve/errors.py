"""Client errors with their HTTP status, and the one JSON shape every error body has.

The body mirrors MMS's own error bodies (``{"code", "type", "message"}``) so a client parses
errors from the handler and from MMS (404, 413, 503) the same way. The message is one line and
never a traceback: tracebacks go to the worker log.
"""

from __future__ import annotations

import json
from http import HTTPStatus

from sagemaker_inference.errors import BaseInferenceToolkitError


def one_line(text: str, limit: int = 300) -> str:
    """Collapse whitespace (Netty rejects CR/LF in reason phrases) and bound the length."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def error_body(status: int, message: str) -> str:
    return json.dumps(
        {"code": status, "type": HTTPStatus(status).phrase, "message": one_line(message)}
    )


class ServeError(BaseInferenceToolkitError):
    """A request we refuse; ``status`` is the HTTP code, ``message`` the one-line reason."""

    status = HTTPStatus.BAD_REQUEST

    def __init__(self, message: str) -> None:
        super().__init__(int(self.status), one_line(message), HTTPStatus(self.status).phrase)

    def __str__(self) -> str:
        return self.message


class BadRequest(ServeError):
    status = HTTPStatus.BAD_REQUEST


class NotAcceptable(ServeError):
    status = HTTPStatus.NOT_ACCEPTABLE


class PayloadTooLarge(ServeError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class UnsupportedMediaType(ServeError):
    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE


class InsufficientMemory(ServeError):
    """Multi-model mode: loading this model would not fit in the memory left (SageMaker's
    multi-model contract answers 507 so the platform unloads another model and retries)."""

    status = HTTPStatus.INSUFFICIENT_STORAGE


class ModelNotFound(ServeError):
    """Multi-model mode: no model of that name is loaded."""

    status = HTTPStatus.NOT_FOUND


class ModelConflict(ServeError):
    """Multi-model mode: a model of that name is already loaded (unload it first)."""

    status = HTTPStatus.CONFLICT
