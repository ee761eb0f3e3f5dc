"""The handler as MMS calls it (a real mms Context, no server): status codes, JSON bodies,
per-request headers, no tracebacks, and the one-class rule of the handler module."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mms.context import Context, RequestProcessor
from mms.model_loader import ModelLoader

from container_serve import handler_service, inference
from container_serve.env_names import MODEL_DIR_ENV
from container_serve.transformer import ServeTransformer

from .test_serve_inference import JPEG, served  # noqa: F401  (fixture)


def context_for(*headers: dict[str, str]) -> Context:
    context = Context("model", "/nonexistent", None, len(headers), None, "1.1.11")
    context.request_processor = [RequestProcessor(dict(h)) for h in headers]
    return context


def ready(served: inference.ServedModel) -> ServeTransformer:  # noqa: F811
    transformer = ServeTransformer()
    transformer._validate_user_module_and_set_functions()
    transformer._model, transformer._initialized = served, True
    return transformer


def answer(context: Context, responses: list[Any], idx: int) -> tuple[int, dict[str, Any]]:
    code, _ = context.get_response_status(idx)
    assert context.get_response_content_type(idx) == "application/json"
    return code, json.loads(responses[idx])


def test_handler_module_has_exactly_one_class() -> None:
    assert ModelLoader.list_model_services(handler_service) == [handler_service.HandlerService]


def test_success_and_errors_per_request(served: inference.ServedModel) -> None:  # noqa: F811
    context = context_for(
        {"Content-Type": "image/jpeg", "X-Amzn-SageMaker-Custom-Attributes": "top_k=1"},
        {"content-type": "text/csv"},
        {"CONTENT-TYPE": "image/jpeg", "ACCEPT": "text/csv"},
        {"Content-Type": "image/jpeg"},
    )
    data = [{"body": JPEG}, {"body": b"1,2"}, {"body": JPEG}, {"body": b""}]
    responses = ready(served).transform(data, context)
    code, doc = answer(context, responses, 0)
    assert code == 200 and len(doc["predictions"][0]["top_k"]) == 1
    for idx, status in ((1, 415), (2, 406), (3, 400)):
        code, doc = answer(context, responses, idx)
        assert code == status == doc["code"]
        assert "Traceback" not in responses[idx] and "\n" not in responses[idx]


def test_unexpected_error_is_a_generic_500(
    served: inference.ServedModel,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(images: list[bytes], model: Any) -> None:
        raise RuntimeError("secret internals")

    transformer = ready(served)
    transformer._predict_fn = broken
    context = context_for({"Content-Type": "image/jpeg"})
    responses = transformer.transform([{"body": JPEG}], context)
    code, doc = answer(context, responses, 0)
    assert code == 500 and doc["code"] == 500 and "secret" not in responses[0]
    assert "secret internals" in caplog.text  # the traceback goes to the log


def test_unloadable_model_hides_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(MODEL_DIR_ENV, str(tmp_path))
    context = context_for({"Content-Type": "image/jpeg"})
    responses = ServeTransformer().transform([{"body": JPEG}], context)
    code, doc = answer(context, responses, 0)
    assert code == 500 and "model not loaded" in doc["message"]
    assert str(tmp_path) not in responses[0] and "manifest.json" not in responses[0]
    assert f"{tmp_path}/manifest.json: not found" in caplog.text  # the log says which file


def test_json_the_parser_refuses_is_a_400_not_a_500(
    served: inference.ServedModel,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    bodies = [b'{"image": ' + b"9" * 4301 + b"}", b"[" * 100_000 + b"]" * 100_000,
              json.dumps({"image": "x"}).encode("utf-16")]
    context = context_for(*[{"Content-Type": "application/json"}] * len(bodies))
    responses = ready(served).transform([{"body": b} for b in bodies], context)
    for idx in range(len(bodies)):
        code, doc = answer(context, responses, idx)
        assert code == 400 == doc["code"], doc
        assert "\n" not in responses[idx]
    assert "Traceback" not in caplog.text
