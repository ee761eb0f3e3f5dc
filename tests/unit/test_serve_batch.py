"""JSON Lines (batch transform) through the handler as MMS calls it: one output line per input
line, in order, each the per-image object of a single-image request; error lines; strict mode;
the execution parameters the container advertises (docs/serving-api.md, "Batch transform")."""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

import pytest

from container_serve import batch, inference
from container_serve.front import render_config
from container_serve.settings import ServeSettings

from .test_serve_inference import SETTINGS, encode, photo, served  # noqa: F401  (fixture)
from .test_serve_transformer import context_for, ready

JSONL = "application/jsonlines"


def colour(rgb: tuple[int, int, int]) -> bytes:
    image = photo()
    image.paste(rgb, (0, 0, 40, 30))
    return encode(image, "JPEG")


PHOTOS = [colour(c) for c in ((250, 10, 10), (10, 250, 10), (10, 10, 250), (200, 200, 10),
                               (10, 200, 200), (120, 60, 200), (90, 90, 90))]


def record(image: bytes) -> bytes:
    return json.dumps({"image": base64.b64encode(image).decode()}).encode()


def call(served_model: inference.ServedModel, body: bytes, content_type: str = JSONL,
         **headers: str) -> tuple[int, str, str]:
    """(status, response content type, body) of one request through the transformer."""
    context = context_for({"Content-Type": content_type, **headers})
    [response] = ready(served_model).transform([{"body": body}], context)
    code, _ = context.get_response_status(0)
    return code, context.get_response_content_type(0), response


def single(served_model: inference.ServedModel, image: bytes) -> dict[str, Any]:
    """What a client gets for this image alone from /invocations (image/jpeg)."""
    code, _, body = call(served_model, image, "image/jpeg")
    assert code == 200, body
    [prediction] = json.loads(body)["predictions"]
    return prediction


def lines(body: str) -> list[dict[str, Any]]:
    assert not body.endswith("\n")  # AssembleWith Line adds the newline after each answer
    return [json.loads(line) for line in body.split("\n")]


def test_multi_record_answers_each_line_in_order_as_a_single_request(served):  # noqa: F811
    # 7 records, SERVE_MAX_IMAGES=3 in these settings: three forward passes (3 + 3 + 1)
    body = b"\n".join(record(p) for p in PHOTOS) + b"\n"
    code, kind, answer = call(served, body)
    assert (code, kind) == (200, JSONL)
    assert lines(answer) == [single(served, p) for p in PHOTOS]
    assert len({json.dumps(line) for line in lines(answer)}) > 1  # the photos differ


@pytest.mark.parametrize("content_type", ["application/jsonl", "application/x-jsonlines",
                                          "Application/JSONLines; charset=utf-8"])
def test_single_record_and_other_json_lines_types(served, content_type):  # noqa: F811
    code, kind, answer = call(served, record(PHOTOS[0]) + b"\r\n", content_type)
    assert code == 200 and kind == JSONL
    assert lines(answer) == [single(served, PHOTOS[0])]


BAD = {
    "not base64": b'{"image": "%%%"}',
    "not an image": record(b"plain text, no image"),
    "truncated jpeg": record(PHOTOS[0][:60]),  # passes the type sniff, fails to decode
    "two images": json.dumps({"images": [base64.b64encode(p).decode() for p in PHOTOS[:2]]
                              }).encode(),
    "blank line": b"   ",
    "not json": b"{image:",
}


@pytest.mark.parametrize("name", list(BAD))
def test_a_bad_record_gives_an_error_line_in_its_place(served, name):  # noqa: F811
    records = [record(PHOTOS[0]), record(PHOTOS[1]), BAD[name], record(PHOTOS[2])]
    code, kind, answer = call(served, b"\n".join(records))
    assert (code, kind) == (200, JSONL)
    out = lines(answer)
    assert len(out) == 4
    assert out[:2] + out[3:] == [single(served, p) for p in PHOTOS[:3]]
    error = out[2]["error"]
    assert error["code"] == 400 and error["type"] == "Bad Request"
    assert error["message"].startswith("record 3 of this request: ")


@pytest.mark.parametrize("how", ["environment", "custom attributes"])
def test_strict_mode_fails_the_request_with_the_records_4xx(served, how):  # noqa: F811
    headers = {}
    if how == "environment":
        served = dataclasses.replace(served, settings=dataclasses.replace(SETTINGS,
                                                                          batch_strict=True))
    else:
        headers = {"X-Amzn-SageMaker-Custom-Attributes": "top_k=2;strict=true"}
    body = b"\n".join([record(PHOTOS[0]), BAD["not an image"]])
    code, kind, answer = call(served, body, **headers)
    assert (code, kind) == (400, "application/json")
    error = json.loads(answer)
    assert error["code"] == 400 and error["message"].startswith("record 2 of this request: ")
    assert call(served, record(PHOTOS[0]), **headers)[0] == 200  # good records still pass


def test_top_k_and_accept_apply_to_json_lines(served):  # noqa: F811
    attrs = {"X-Amzn-SageMaker-Custom-Attributes": "top_k=1"}
    _, _, answer = call(served, record(PHOTOS[0]), **attrs)
    assert len(lines(answer)[0]["top_k"]) == 1
    assert call(served, record(PHOTOS[0]), Accept="application/jsonlines")[0] == 200
    code, _, answer = call(served, record(PHOTOS[0]), Accept="text/csv")
    assert code == 406 and json.loads(answer)["code"] == 406


def test_request_size_limit_and_empty_body(served):  # noqa: F811
    one = record(PHOTOS[0])
    big = b"\n".join([one] * (SETTINGS.max_request_bytes // len(one) + 1))
    assert call(served, big)[0] == 413
    assert call(served, b"")[0] == 400


@pytest.mark.parametrize(("workers", "request_bytes", "expected"), [
    (1, 6_553_500, (1, 6)),  # MMS's default request limit: 6.25 MiB -> 6
    (4, 6_553_500, (4, 6)),
    (32, 6_553_500, (16, 6)),  # 32 x 6 > 100: concurrency gives way, the payload stays
    (2, 300 * 1024 * 1024, (1, 100)),  # the payload is capped at SageMaker's 100 MB
    (2, 100_000, (2, 1)),
])
def test_execution_parameters_fit_workers_and_limits(workers, request_bytes, expected):
    settings = ServeSettings(workers=workers, max_request_bytes=request_bytes)
    params = settings.execution_parameters()
    assert (params["MaxConcurrentTransforms"], params["MaxPayloadInMB"]) == expected
    assert params["BatchStrategy"] == "SingleRecord"
    assert params["MaxConcurrentTransforms"] * params["MaxPayloadInMB"] <= 100


def test_nginx_answers_execution_parameters_itself(tmp_path):
    settings = ServeSettings(workers=3)
    config = render_config(settings, str(tmp_path), 7_000_000)
    expected = json.dumps(settings.execution_parameters())
    assert (f"location = /execution-parameters {{  # ServeSettings.execution_parameters\n"
            f"            return 200 '{expected}';") in config


def test_split_records_as_sagemakers_line_split_cuts_them():
    assert batch.split_records(b"a\nb\r\n\nc") == [b"a", b"b", b"", b"c"]
    assert batch.split_records(b"a\n") == [b"a"]
    assert batch.split_records(b"") == []
