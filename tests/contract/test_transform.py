"""transform.py: CreateModel and CreateTransformJob (validated by botocore's SageMaker model
before the recorder answers them), defaults left to the container, waiting, moto."""

from __future__ import annotations

import pytest

from drivers import transform
from tests.contract.conftest import (
    AWS_SETTINGS,
    BUCKET,
    REGION,
    ROLE,
    SERVE_IMAGE,
    completed_job,
)

MODEL_DATA = f"s3://{BUCKET}/resnet-byoc/training/train-1/output/model.tar.gz"
INPUT = f"s3://{BUCKET}/photos/"
OUTPUT = f"s3://{BUCKET}/predictions"
OWNER_TAG = {"Key": "sagemaker-resnet50:created-by", "Value": "scripts/transform.py"}
# What the serving container answers on GET /execution-parameters decides these by default.
CONTAINER_DECIDES = ("BatchStrategy", "MaxPayloadInMB", "MaxConcurrentTransforms")


def dry(run_driver, *extra: str, model: tuple[str, ...] = ("--model-data", MODEL_DATA)):
    return run_driver(transform, [*AWS_SETTINGS, "--dry-run", "--name", "tj-1", *model,
                                  "--input", INPUT, "--output", OUTPUT, *extra])


def test_model_uses_the_serving_image_and_the_artifact(run_driver):
    model = dry(run_driver).only("CreateModel")
    assert model == {"ModelName": "tj-1", "ExecutionRoleArn": ROLE,
                     "PrimaryContainer": {"Image": SERVE_IMAGE, "ModelDataUrl": MODEL_DATA},
                     "Tags": [OWNER_TAG]}


def test_photos_one_per_object_by_default(run_driver):
    result = dry(run_driver, "--instance-type", "ml.c6i.2xlarge", "--instance-count", "3")
    job = result.only("CreateTransformJob")
    assert job == {
        "TransformJobName": "tj-1", "ModelName": "tj-1",
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": INPUT}},
            "ContentType": "application/x-image", "SplitType": "None",
            "CompressionType": "None"},
        "TransformOutput": {"S3OutputPath": OUTPUT, "Accept": "application/json",
                            "AssembleWith": "None"},
        "TransformResources": {"InstanceType": "ml.c6i.2xlarge", "InstanceCount": 3},
        "Tags": [OWNER_TAG]}
    assert [r["operation"] for r in result.requests()] == ["CreateModel", "CreateTransformJob"]
    assert "would create model and transform job tj-1" in result.err


def test_json_lines_split_by_line_and_assembled_by_line(run_driver):
    job = dry(run_driver, "--content-type", "application/jsonlines", "--strict",
              "--env", "SERVE_TOP_K=3").only("CreateTransformJob")
    assert job["TransformInput"]["ContentType"] == "application/jsonlines"
    assert job["TransformInput"]["SplitType"] == "Line"
    assert job["TransformOutput"] == {"S3OutputPath": OUTPUT, "Accept": "application/jsonlines",
                                      "AssembleWith": "Line"}
    assert job["Environment"] == {"SERVE_TOP_K": "3", "SERVE_BATCH_STRICT": "true"}
    assert not set(CONTAINER_DECIDES) & set(job)  # left to /execution-parameters


def test_execution_parameters_when_given(run_driver):
    job = dry(run_driver, "--content-type", "application/jsonlines", "--batch-strategy",
              "MultiRecord", "--max-payload-mb", "5", "--max-concurrent", "4"
              ).only("CreateTransformJob")
    assert {k: job[k] for k in CONTAINER_DECIDES} == {
        "BatchStrategy": "MultiRecord", "MaxPayloadInMB": 5, "MaxConcurrentTransforms": 4}


def test_default_output_is_under_the_bucket_and_prefix(run_driver):
    result = run_driver(transform, [*AWS_SETTINGS, "--dry-run", "--name", "tj-1",
                                    "--model-data", MODEL_DATA, "--input", INPUT])
    output = result.only("CreateTransformJob")["TransformOutput"]["S3OutputPath"]
    assert output == f"s3://{BUCKET}/resnet-byoc/transform/tj-1"


def test_training_job_name_gives_the_model_data(run_driver):
    result = run_driver(transform, [*AWS_SETTINGS, "--dry-run", "--name", "tj-1",
                                    "--training-job", "train-1", "--input", INPUT],
                        {"DescribeTrainingJob": completed_job(MODEL_DATA)})
    assert result.call("DescribeTrainingJob") == {"TrainingJobName": "train-1"}
    assert result.only("CreateModel")["PrimaryContainer"]["ModelDataUrl"] == MODEL_DATA


@pytest.mark.parametrize("extra, message", [
    (["--split-type", "Line"], "needs JSON Lines"),
    (["--strict"], "JSON Lines"),
    (["--max-payload-mb", "101"], "1-100"),
    (["--max-payload-mb", "20", "--max-concurrent", "6"], "at most 100"),
    (["--instance-count", "0"], "at least 1"),
    (["--env", "NOEQUALS"], "NAME=VALUE"),
])
def test_bad_settings_fail_before_any_call(run_driver, extra, message):
    result = dry(run_driver, *extra)
    assert result.rc == 2 and message in result.err and result.recorder.calls == []


def test_missing_model_or_input(run_driver):
    result = run_driver(transform, [*AWS_SETTINGS, "--input", INPUT])
    assert result.rc == 2 and "missing model" in result.err
    result = run_driver(transform, [*AWS_SETTINGS, "--model-data", MODEL_DATA])
    assert result.rc == 2 and "missing input" in result.err


def job_states(*states: str, reason: str | None = None):
    remaining = list(states)

    def describe(params: dict) -> dict:
        status = remaining.pop(0) if len(remaining) > 1 else remaining[0]
        answer = {"TransformJobName": "tj-1", "TransformJobArn": "arn:x", "ModelName": "tj-1",
                  "TransformJobStatus": status, "CreationTime": "2026-11-27T20:00:00Z",
                  "TransformInput": {"DataSource": {"S3DataSource": {
                      "S3DataType": "S3Prefix", "S3Uri": INPUT}}},
                  "TransformResources": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1}}
        if reason:
            answer["FailureReason"] = reason
        return answer

    return {"CreateModel": {"ModelArn": "arn:x"},
            "CreateTransformJob": {"TransformJobArn": "arn:x"},
            "DescribeTransformJob": describe}


def test_wait_polls_until_completed(run_driver, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    result = run_driver(transform, [*AWS_SETTINGS, "--name", "tj-1", "--model-data",
                                    MODEL_DATA, "--input", INPUT, "--output", OUTPUT, "--wait"],
                        job_states("InProgress", "InProgress", "Completed"))
    assert result.rc == 0, result.err
    assert result.operations().count("DescribeTransformJob") == 3
    assert "completed:     tj-1" in result.out and f"{OUTPUT}/<input key>.out" in result.out


def test_wait_reports_a_failed_job(run_driver, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    reason = "ClientError: See job logs for more information"
    result = run_driver(transform, [*AWS_SETTINGS, "--name", "tj-1", "--model-data",
                                    MODEL_DATA, "--input", INPUT, "--wait"],
                        job_states("InProgress", "Failed", reason=reason))
    assert result.rc == 1
    assert reason in result.err and "/aws/sagemaker/TransformJobs" in result.err


def test_moto_accepts_the_requests(run_driver, moto_aws):
    """The same requests sent for real, to moto's SageMaker, which then describes the job."""
    import boto3

    result = run_driver(transform, [*AWS_SETTINGS, "--name", "tj-1", "--model-data",
                                    MODEL_DATA, "--input", INPUT, "--output", OUTPUT,
                                    "--content-type", "application/jsonlines"])
    assert result.rc == 0, result.err
    job = boto3.client("sagemaker", region_name=REGION).describe_transform_job(
        TransformJobName="tj-1")
    assert job["ModelName"] == "tj-1"
    assert job["TransformInput"]["SplitType"] == "Line"
    assert job["TransformOutput"]["AssembleWith"] == "Line"
