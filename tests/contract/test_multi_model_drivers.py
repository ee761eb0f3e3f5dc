"""deploy.py --multi-model and predict.py --target-model: the CreateModel of a multi-model
endpoint (Mode MultiModel, ModelDataUrl the S3 prefix) and the TargetModel of InvokeEndpoint,
against botocore's models (run_driver), and the same invocation to a local multi-model server."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from drivers import deploy, predict
from tests.contract.conftest import AWS_SETTINGS, BUCKET, REGION, SERVE_IMAGE
from tests.contract.test_predict import RESPONSE, _Server, local_server  # noqa: F401 (fixture)

PREFIX = f"s3://{BUCKET}/resnet-byoc/models/"
SAMPLES = Path(__file__).resolve().parents[2] / "sample_data" / "photos5"


@pytest.fixture
def jpeg() -> Path:
    return sorted(SAMPLES.glob("test/*/*.jpg"))[0]


def test_multi_model_creates_a_multi_model_container_on_the_prefix(run_driver):
    result = run_driver(deploy, [*AWS_SETTINGS, "--dry-run", "--name", "ep-1", "--multi-model",
                                 PREFIX, "--env", "SAGEMAKER_MODEL_SERVER_WORKERS=2"])
    assert result.rc == 0, result.err
    assert result.only("CreateModel")["PrimaryContainer"] == {
        "Image": SERVE_IMAGE, "Mode": "MultiModel", "ModelDataUrl": PREFIX,
        "Environment": {"SAGEMAKER_MODEL_SERVER_WORKERS": "2", "SAGEMAKER_MULTI_MODEL": "true"}}
    variant = result.only("CreateEndpointConfig")["ProductionVariants"][0]
    assert "InstanceType" in variant and "ServerlessConfig" not in variant


@pytest.mark.parametrize("extra, message", [
    (["--multi-model", f"{PREFIX}model.tar.gz"], "prefix ending in '/'"),
    (["--multi-model", PREFIX, "--serverless", "4096:5"], "serverless"),
    (["--multi-model", PREFIX, "--model-data", f"{PREFIX}a.tar.gz"], "replaces --model-data"),
    (["--multi-model", PREFIX, "--manifest-sha256", "ab" * 32], "--manifest-sha256"),
    (["--multi-model", PREFIX, "--async-output", f"s3://{BUCKET}/out"], "TargetModel"),
])
def test_bad_multi_model_settings_fail_before_any_call(run_driver, extra, message):
    result = run_driver(deploy, [*AWS_SETTINGS, "--dry-run", *extra])
    assert result.rc == 2 and message in result.err, result.err
    assert result.recorder.calls == []


def test_target_model_travels_as_target_model(run_driver, jpeg: Path):
    responses = {"InvokeEndpoint": lambda params: {
        "Body": io.BytesIO(json.dumps(RESPONSE).encode()), "ContentType": "application/json"}}
    result = run_driver(predict, ["--region", REGION, "--endpoint", "ep-1", "--target-model",
                                  "customer-a/model.tar.gz", str(jpeg)], responses)
    assert result.rc == 0, result.err
    [call] = [c.params for c in result.recorder.calls]
    assert call["TargetModel"] == "customer-a/model.tar.gz"
    assert call["EndpointName"] == "ep-1" and call["Body"] == jpeg.read_bytes()


def test_async_refuses_a_target_model(run_driver, jpeg: Path):
    """InvokeEndpointAsync has no TargetModel: saying nothing would invoke the wrong model."""
    result = run_driver(predict, ["--region", REGION, "--endpoint", "ep-1", "--async",
                                  "--target-model", "a.tar.gz", str(jpeg)])
    assert result.rc == 2 and "--target-model" in result.err, result.err
    assert result.recorder.calls == []


def test_without_target_model_no_target_model_is_sent(run_driver, jpeg: Path):
    result = run_driver(predict, ["--region", REGION, "--endpoint", "ep-1", "--dry-run",
                                  str(jpeg)])
    [request] = result.requests()
    assert "TargetModel" not in request["params"]


def test_local_target_model_posts_to_the_models_invoke_route(local_server: str,  # noqa: F811
                                                             jpeg: Path, capsys):
    rc = predict.main(["--url", local_server, "--target-model", "a b/model.tar.gz", str(jpeg)])
    assert rc == 0, capsys.readouterr().err
    [(path, headers, body)] = _Server.seen
    assert path == "/models/a%20b%2Fmodel.tar.gz/invoke"  # one path segment, percent-encoded
    headers = {k.lower(): v for k, v in headers.items()}
    assert headers["x-amzn-sagemaker-target-model"] == "a b/model.tar.gz"
    assert body == jpeg.read_bytes()
