"""JSON Lines for batch transform: one ``{"image": "<base64>"}`` record a line in, one JSON line
out per record, in order (so SageMaker's AssembleWith Line lines the output up with the input).

Each output line is the per-image object a single-image /invocations gives for that image (the
element of its ``"predictions"``): the same input_fn / predict_fn / output_fn build it, so a
field output_fn adds appears here too. A record we refuse gives an error line in its place,
``{"error": {"code", "type", "message"}}`` (the shape of every error body), and the other
records are answered; in strict mode (SERVE_BATCH_STRICT=true, or ``strict=true`` in
CustomAttributes) the first bad record fails the whole request with its 4xx instead.

A request may hold many records (BatchStrategy MultiRecord): they run in forward passes of at
most SERVE_MAX_IMAGES images, each pass held to the same pixel limits as one /invocations
request, so memory stays that of one request whatever the mini-batch holds. A pass that fails
as a whole (a bad image, or too many pixels together) is run again record by record, so only
the bad records get error lines. Docs: docs/serving-api.md, "Batch transform".
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from container_serve.errors import (
    BadRequest,
    NotAcceptable,
    PayloadTooLarge,
    ServeError,
    error_body,
)
from container_serve.inference import (
    CUSTOM_ATTRIBUTES,
    ServedModel,
    media_type,
    parse_abstain,
    parse_top_k,
)
from container_serve.media import JSON, JSONLINES_TYPES
from container_serve.media import JSONLINES as JSONLINES

_ACCEPTABLE = frozenset({*JSONLINES_TYPES, JSON, "application/*", "*/*"})
_STRICT = re.compile(r"(^|[;,])\s*strict\s*=\s*(true|1|yes)\s*($|[;,])", re.IGNORECASE)


@dataclass(frozen=True)
class Handlers:
    """The transformer's bound input_fn / predict_fn / output_fn (toolkit patches included)."""

    input_fn: Callable[..., list[bytes]]
    predict_fn: Callable[..., Any]
    output_fn: Callable[..., str]


def is_jsonlines(content_type: str | None) -> bool:
    return media_type(content_type) in JSONLINES_TYPES


def check_accept(accept: str | None) -> None:
    """A JSON Lines request is answered in JSON Lines: a missing Accept, */*, application/*,
    application/json or a JSON Lines type will do."""
    if not accept or not accept.strip():
        return
    if any(media_type(part) in _ACCEPTABLE for part in accept.split(",")):
        return
    raise NotAcceptable(f"cannot answer a JSON Lines request in {accept!r}; it is answered in "
                        f"{JSONLINES}")


def is_strict(custom_attributes: str | None, default: bool) -> bool:
    return default or bool(_STRICT.search(custom_attributes or ""))


def split_records(raw: bytes) -> list[bytes]:
    """Lines, as SageMaker's Line split cuts them: each may end in \\n (or \\r\\n); a final
    newline does not start another record. A blank line is a record (it gets an error line)."""
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line.removesuffix(b"\r") for line in lines]


def _one_image(record: bytes, served: ServedModel, handlers: Handlers) -> bytes:
    if not record.strip():
        raise BadRequest("the line is empty; a record is {\"image\": \"<base64>\"}")
    images = handlers.input_fn(record, JSON, served.settings)
    if len(images) != 1:
        raise BadRequest(f"the line holds {len(images)} images; a record is one "
                         '{"image": "<base64>"}')
    return images[0]


def _predict(images: list[bytes], served: ServedModel, handlers: Handlers,
             top_k: int) -> list[dict[str, Any]]:
    """One forward pass; output_fn's body split into its per-image objects."""
    body = handlers.output_fn(handlers.predict_fn(images, served), None, top_k)
    return json.loads(body)["predictions"]


def _run_chunk(images: list[bytes], served: ServedModel, handlers: Handlers,
               top_k: int) -> list[dict[str, Any] | ServeError]:
    """A pass over the chunk; if it fails as a whole, each image alone (the failure is then
    the bad record's)."""
    try:
        return list(_predict(images, served, handlers, top_k))
    except ServeError:
        if len(images) == 1:
            raise
    results: list[dict[str, Any] | ServeError] = []
    for image in images:
        try:
            results.extend(_predict([image], served, handlers, top_k))
        except ServeError as exc:
            results.append(exc)
    return results


def _with_record(exc: ServeError, number: int) -> ServeError:
    """The same error (same status), its message prefixed with the record's number."""
    return type(exc)(f"record {number} of this request: {exc.message}")


def predictions(records: list[bytes], served: ServedModel, handlers: Handlers,
                top_k: int, strict: bool) -> list[dict[str, Any] | ServeError]:
    """One result per record, in order: the per-image object, or the error for that record
    (in strict mode the first bad record's error is raised instead)."""
    results: list[dict[str, Any] | ServeError | None] = [None] * len(records)
    pending: list[tuple[int, bytes]] = []
    for i, record in enumerate(records):
        try:
            pending.append((i, _one_image(record, served, handlers)))
        except ServeError as exc:
            results[i] = exc
    chunk = served.settings.max_images
    for start in range(0, len(pending), chunk):
        part = pending[start:start + chunk]
        try:
            answers = _run_chunk([image for _, image in part], served, handlers, top_k)
        except ServeError as exc:  # a chunk of one that failed
            answers = [exc]
        for (i, _), answer in zip(part, answers, strict=True):
            results[i] = answer
    errors = [(i, r) for i, r in enumerate(results) if isinstance(r, ServeError)]
    if strict and errors:
        raise _with_record(errors[0][1], errors[0][0] + 1)
    return [_with_record(r, i + 1) if isinstance(r, ServeError) else r
            for i, r in enumerate(results)]


def _line(result: dict[str, Any] | ServeError) -> str:
    if isinstance(result, ServeError):
        return json.dumps({"error": json.loads(error_body(result.status_code, result.message))})
    return json.dumps(result)


def transform(body: bytes | str | None, headers: dict[str, str], served: ServedModel,
              handlers: Handlers) -> str:
    """A JSON Lines request -> its JSON Lines answer: one line per record, no final newline
    (AssembleWith Line adds one after each answer)."""
    settings = served.settings
    check_accept(headers.get("accept"))
    custom = headers.get(CUSTOM_ATTRIBUTES)
    top_k = parse_top_k(custom, settings)
    # abstain=false applies per line as it does to /invocations.
    handlers = replace(handlers, output_fn=partial(handlers.output_fn,
                                                   abstain=parse_abstain(custom)))
    raw = body.encode("utf-8") if isinstance(body, str) else bytes(body or b"")
    if len(raw) > settings.max_request_bytes:
        raise PayloadTooLarge(f"request body is {len(raw)} bytes; the limit is "
                              f"{settings.max_request_bytes}")
    records = split_records(raw)
    if not records:
        raise BadRequest("request body is empty")
    results = predictions(records, served, handlers, top_k,
                          is_strict(custom, settings.batch_strict))
    return "\n".join(_line(result) for result in results)
