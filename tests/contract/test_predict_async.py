"""predict.py --async: the upload, the InvokeEndpointAsync request, and the wait for the
result or failure object (S3 is moto's; InvokeEndpointAsync and the endpoint's description
are answered as SageMaker would, after botocore checked each request against its model)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest

from drivers import predict
from tests.contract.conftest import REGION

BUCKET = "async-bucket"
OUTPUT = f"s3://{BUCKET}/resnet/async-out"
RESULT = {"predictions": [{"top_k": [{"label": "tabby_cat", "index": 3, "probability": 0.91}]}]}
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "cat.jpg"
    path.write_bytes(JPEG)
    return path


@pytest.fixture
def s3(moto_aws):
    client = boto3.client("s3", region_name=REGION)
    client.create_bucket(Bucket=BUCKET,
                         CreateBucketConfiguration={"LocationConstraint": REGION})
    return client


def put(s3, uri: str, body: bytes) -> None:
    bucket, key = predict.split_s3(uri)
    s3.put_object(Bucket=bucket, Key=key, Body=body)


def read(s3, uri: str) -> bytes:
    bucket, key = predict.split_s3(uri)
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def endpoint_answers(**extra) -> dict:
    """DescribeEndpoint / DescribeEndpointConfig of an endpoint deploy.py --async-output made,
    and an InvokeEndpointAsync that queues (SageMaker names the output after the inference)."""
    config = {"EndpointConfigName": "ep-1", "EndpointConfigArn": "arn:x",
              "CreationTime": "2026-11-27T20:00:00Z",
              "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": "ep-1"}],
              "AsyncInferenceConfig": {"OutputConfig": {
                  "S3OutputPath": OUTPUT, "S3FailurePath": f"{OUTPUT}/failures"}}}
    return {
        "DescribeEndpoint": {"EndpointName": "ep-1", "EndpointArn": "arn:x",
                             "EndpointConfigName": "ep-1", "EndpointStatus": "InService",
                             "CreationTime": "2026-11-27T20:00:00Z",
                             "LastModifiedTime": "2026-11-27T20:00:00Z"},
        "DescribeEndpointConfig": config,
        "InvokeEndpointAsync": {"InferenceId": "inf-1",
                                "OutputLocation": f"{OUTPUT}/inf-1.out",
                                "FailureLocation": f"{OUTPUT}/failures/inf-1-error.out"},
        **extra,
    }


class Clock:
    """predict's time: each sleep advances it, and may plant an object (the endpoint done)."""

    def __init__(self, on_sleep=None) -> None:
        self.now, self.sleeps, self.on_sleep = 0.0, [], on_sleep

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep and len(self.sleeps) == 2:
            self.on_sleep()


def run_async(run_driver, monkeypatch, photo: Path, clock: Clock, *extra: str, answers=None):
    monkeypatch.setattr(predict, "time", SimpleNamespace(monotonic=clock.monotonic,
                                                         sleep=clock.sleep))
    return run_driver(predict, ["--region", REGION, "--endpoint", "ep-1", "--async",
                                "--top-k", "1", *extra, str(photo)],
                      answers or endpoint_answers())


def test_uploads_invokes_async_and_waits_for_the_output(run_driver, monkeypatch, s3, photo):
    clock = Clock(lambda: put(s3, f"{OUTPUT}/inf-1.out", json.dumps(RESULT).encode()))
    result = run_async(run_driver, monkeypatch, photo, clock, "--invocation-timeout", "3600")
    assert result.rc == 0, result.err
    invoke = result.call("InvokeEndpointAsync")
    location = invoke.pop("InputLocation")
    assert invoke == {"EndpointName": "ep-1", "ContentType": "image/jpeg",
                      "Accept": "application/json", "CustomAttributes": "top_k=1",
                      "InvocationTimeoutSeconds": 3600}
    # uploaded under the endpoint's output path, the file's bytes and type
    assert location.startswith(f"{OUTPUT}/inputs/") and location.endswith("-cat.jpg")
    assert read(s3, location) == JPEG
    upload = result.call("PutObject")
    assert upload["ContentType"] == "image/jpeg"
    ops = result.operations()
    assert ops.index("PutObject") < ops.index("InvokeEndpointAsync") < ops.index("HeadObject")
    # polled until the object appeared, with a growing pause
    assert ops.count("HeadObject") >= 3 and clock.sleeps[1] > clock.sleeps[0]
    assert "tabby_cat" in result.out and "0.9100" in result.out


def test_input_location_flag_and_json_output(run_driver, monkeypatch, s3, photo):
    put(s3, f"{OUTPUT}/inf-1.out", json.dumps(RESULT).encode())  # done at once
    result = run_async(run_driver, monkeypatch, photo, Clock(), "--json",
                       "--input-location", f"s3://{BUCKET}/mine")
    assert result.rc == 0, result.err
    assert result.call("InvokeEndpointAsync")["InputLocation"].startswith(
        f"s3://{BUCKET}/mine/")
    assert "DescribeEndpointConfig" not in result.operations()
    assert json.loads(result.out) == {"cat.jpg": RESULT}


def test_a_failure_object_is_a_one_line_failure(run_driver, monkeypatch, s3, photo):
    error = {"code": 400, "message": "cannot decode the image:\nbroken data stream"}
    put(s3, f"{OUTPUT}/failures/inf-1-error.out", json.dumps(error).encode())
    result = run_async(run_driver, monkeypatch, photo, Clock())
    assert result.rc == 1
    assert result.err.splitlines()[-1] == (
        f"failed: cat.jpg: the endpoint failed ({OUTPUT}/failures/inf-1-error.out): "
        "cannot decode the image: broken data stream")


def test_no_result_within_the_wait_timeout(run_driver, monkeypatch, s3, photo):
    clock = Clock()
    result = run_async(run_driver, monkeypatch, photo, clock, "--wait-timeout", "30")
    assert result.rc == 1
    last = result.err.splitlines()[-1]
    assert last.startswith(f"failed: cat.jpg: no result at {OUTPUT}/inf-1.out after 30 s")
    assert "inf-1" in last
    assert clock.now == pytest.approx(30) and max(clock.sleeps) <= predict.ASYNC_POLL_MAX_S


def test_an_endpoint_that_is_not_async_is_refused(run_driver, monkeypatch, s3, photo):
    answers = endpoint_answers()
    del answers["DescribeEndpointConfig"]["AsyncInferenceConfig"]
    result = run_async(run_driver, monkeypatch, photo, Clock(), answers=answers)
    assert result.rc == 2 and "not asynchronous" in result.err
    assert "PutObject" not in result.operations()


def test_dry_run_prints_the_upload_and_the_invocation(run_driver, photo):
    result = run_driver(predict, ["--region", REGION, "--endpoint", "ep-1", "--async",
                                  "--dry-run", "--input-location", f"s3://{BUCKET}/in",
                                  str(photo)])
    ops = [r["operation"] for r in result.requests()]
    assert ops == ["PutObject", "InvokeEndpointAsync"]


@pytest.mark.parametrize("extra, message", [
    (["--url", "http://127.0.0.1:9", "--async"], "--endpoint"),
    (["--endpoint", "ep-1", "--input-location", f"s3://{BUCKET}/in"], "apply to --async"),
    (["--endpoint", "ep-1", "--async", "--invocation-timeout", "3601"], "1-3600"),
])
def test_flags_that_do_not_fit_are_refused(photo, capsys, extra, message):
    assert predict.main(["--region", REGION, *extra, str(photo)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
