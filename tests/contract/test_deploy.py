"""deploy.py: model, endpoint config variants, endpoint, autoscaling, waiting, teardown."""

from __future__ import annotations

import io
import json

import pytest

from drivers import deploy
from tests.contract.conftest import (
    AWS_SETTINGS,
    BUCKET,
    REGION,
    ROLE,
    SERVE_IMAGE,
    completed_job,
)

MODEL_DATA = f"s3://{BUCKET}/resnet-byoc/training/train-1/output/model.tar.gz"
# what a user sees in the console; deploy.py --delete touches nothing without it
OWNER_TAG = {"Key": "sagemaker-resnet50:created-by", "Value": "scripts/deploy.py"}


def dry(run_driver, *extra: str):
    return run_driver(deploy, [*AWS_SETTINGS, "--dry-run", "--name", "ep-1", *extra])


def test_model_uses_the_serving_image_and_the_artifact(run_driver):
    model = dry(run_driver, "--model-data", MODEL_DATA,
                "--env", "SAGEMAKER_MODEL_SERVER_WORKERS=2").only("CreateModel")
    assert model["ModelName"] == "ep-1"
    assert model["ExecutionRoleArn"] == ROLE
    assert model["PrimaryContainer"] == {
        "Image": SERVE_IMAGE, "ModelDataUrl": MODEL_DATA,
        "Environment": {"SAGEMAKER_MODEL_SERVER_WORKERS": "2"}}


def test_instance_variant_and_endpoint(run_driver):
    result = dry(run_driver, "--model-data", MODEL_DATA, "--instance-type", "ml.c6i.xlarge",
                 "--instance-count", "2")
    config = result.only("CreateEndpointConfig")
    assert config == {"EndpointConfigName": "ep-1", "ProductionVariants": [{
        "VariantName": "AllTraffic", "ModelName": "ep-1", "InitialInstanceCount": 2,
        "InstanceType": "ml.c6i.xlarge", "InitialVariantWeight": 1.0}],
        "Tags": [OWNER_TAG]}
    assert result.only("CreateEndpoint") == {"EndpointName": "ep-1",
                                             "EndpointConfigName": "ep-1",
                                             "Tags": [OWNER_TAG]}
    creates = [r["operation"] for r in result.requests() if r["operation"].startswith("Create")]
    assert creates == ["CreateModel", "CreateEndpointConfig", "CreateEndpoint"]


@pytest.mark.parametrize(("instance_type", "note"), [
    ("ml.g4dn.xlarge", "has a GPU: the serving image runs the model on it"),
    ("ml.p3.2xlarge", "has a GPU: the serving image runs the model on it"),
    ("ml.inf2.xlarge", "has an accelerator, but the serving image runs the model on its CPUs"),
    ("ml.m5.xlarge", None), ("ml.c6i.xlarge", None), ("ml.c6gn.xlarge", None)])
def test_accelerated_instance_is_noted_not_refused(run_driver, instance_type, note):
    result = dry(run_driver, "--model-data", MODEL_DATA, "--instance-type", instance_type)
    assert result.rc == 0
    variant = result.only("CreateEndpointConfig")["ProductionVariants"][0]
    assert variant["InstanceType"] == instance_type  # the user's choice stands
    assert ("note:" in result.err) is (note is not None)
    if note is not None:
        assert f"note: {instance_type} {note}" in " ".join(result.err.split())
    assert "idle" not in result.err or instance_type.startswith("ml.inf")
    # SERVE_DEVICE=auto finds the GPU: deploy sets no device on the model.
    assert "SERVE_DEVICE" not in json.dumps(result.only("CreateModel"))


def test_serverless_variant_and_data_capture(run_driver):
    config = dry(run_driver, "--model-data", MODEL_DATA, "--serverless", "4096:5",
                 "--data-capture", f"s3://{BUCKET}/capture", "--capture-percent", "20") \
        .only("CreateEndpointConfig")
    [variant] = config["ProductionVariants"]
    assert variant == {"VariantName": "AllTraffic", "ModelName": "ep-1",
                       "ServerlessConfig": {"MemorySizeInMB": 4096, "MaxConcurrency": 5}}
    assert config["DataCaptureConfig"] == {
        "EnableCapture": True, "InitialSamplingPercentage": 20,
        "DestinationS3Uri": f"s3://{BUCKET}/capture",
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]}}


COMPLETED_JOB = completed_job(MODEL_DATA)


def test_training_job_name_gives_the_model_data(run_driver):
    job = COMPLETED_JOB
    result = run_driver(deploy, [*AWS_SETTINGS, "--dry-run", "--name", "ep-1",
                                 "--training-job", "train-1"], {"DescribeTrainingJob": job})
    assert result.call("DescribeTrainingJob") == {"TrainingJobName": "train-1"}
    assert result.only("CreateModel")["PrimaryContainer"]["ModelDataUrl"] == MODEL_DATA


def test_autoscaling_target_tracking(run_driver):
    result = dry(run_driver, "--model-data", MODEL_DATA, "--autoscale", "1:4",
                 "--target-invocations", "250")
    target = result.only("RegisterScalableTarget")
    assert target == {"ServiceNamespace": "sagemaker",
                      "ResourceId": "endpoint/ep-1/variant/AllTraffic",
                      "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
                      "MinCapacity": 1, "MaxCapacity": 4}
    policy = result.only("PutScalingPolicy")
    assert policy["PolicyType"] == "TargetTrackingScaling"
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["TargetValue"] == 250.0
    assert tracking["PredefinedMetricSpecification"] == {
        "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"}


@pytest.mark.parametrize("extra, message", [
    (["--serverless", "4000:5"], "memory"),
    (["--serverless", "4096:5", "--autoscale", "1:2"], "serverless"),
    (["--autoscale", "3:2"], "MIN"),
    ([], "missing model"),
])
def test_bad_endpoint_settings_fail_before_any_call(run_driver, extra, message):
    model = ["--model-data", MODEL_DATA] if extra else []
    result = run_driver(deploy, [*AWS_SETTINGS, "--dry-run", *model, *extra])
    assert result.rc == 2 and message in result.err and result.recorder.calls == []


def endpoint(status: str, reason: str | None = None) -> dict:
    answer = {"EndpointName": "ep-1", "EndpointArn": "arn:x", "EndpointConfigName": "ep-1",
              "EndpointStatus": status, "CreationTime": "2026-11-27T20:00:00Z",
              "LastModifiedTime": "2026-11-27T20:00:00Z"}
    if reason:
        answer["FailureReason"] = reason
    return answer


def live_responses(final: dict) -> dict:
    states = iter([endpoint("Creating"), final])
    last = {}

    def describe_endpoint(params: dict) -> dict:
        last["value"] = next(states, last.get("value", final))
        return last["value"]

    return {
        "CreateModel": {"ModelArn": "arn:x"},
        "DescribeModel": {"ModelName": "ep-1", "ModelArn": "arn:x",
                          "CreationTime": "2026-11-27T20:00:00Z"},
        "CreateEndpointConfig": {"EndpointConfigArn": "arn:x"},
        "CreateEndpoint": {"EndpointArn": "arn:x"},
        "DescribeEndpoint": describe_endpoint,
        "RegisterScalableTarget": {},
        "PutScalingPolicy": {"PolicyARN": "arn:x", "Alarms": []},
    }


def test_waits_for_in_service_then_prints_invoke_command(run_driver, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    result = run_driver(deploy, [*AWS_SETTINGS, "--name", "ep-1", "--model-data", MODEL_DATA,
                                 "--autoscale", "1:2"], live_responses(endpoint("InService")))
    assert result.rc == 0, result.err
    assert result.operations().count("DescribeEndpoint") >= 2
    # autoscaling is registered only once the endpoint is InService
    ops = result.operations()
    assert ops.index("RegisterScalableTarget") > max(
        i for i, op in enumerate(ops) if op == "DescribeEndpoint")
    assert "endpoint: ep-1" in result.out
    assert (f"aws sagemaker-runtime invoke-endpoint --region {REGION} --endpoint-name ep-1 "
            "--content-type image/jpeg") in result.out


def test_failed_endpoint_reports_the_reason(run_driver, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    reason = "The primary container for production variant AllTraffic did not pass the ping"
    result = run_driver(deploy, [*AWS_SETTINGS, "--name", "ep-1", "--model-data", MODEL_DATA],
                        live_responses(endpoint("Failed", reason)))
    assert result.rc == 1
    assert reason in result.err and "--delete ep-1 --yes" in result.err


ARN = {"endpoint": f"arn:aws:sagemaker:{REGION}:1:endpoint/ep-1",
       "config": f"arn:aws:sagemaker:{REGION}:1:endpoint-config/ep-1",
       "model": f"arn:aws:sagemaker:{REGION}:1:model/ep-1"}


def test_everything_created_carries_the_project_tag(run_driver):
    result = dry(run_driver, "--model-data", MODEL_DATA)
    for operation in ("CreateModel", "CreateEndpointConfig", "CreateEndpoint"):
        assert result.only(operation)["Tags"] == [OWNER_TAG], operation
    assert "would create model, endpoint config and endpoint ep-1" in result.err
    assert "creating endpoint" not in result.err and "created model" not in result.err


HASH = "ab" * 32


def test_manifest_sha256_pins_the_artifact_in_the_model_environment(run_driver):
    model = dry(run_driver, "--model-data", MODEL_DATA, "--manifest-sha256", HASH.upper(),
                "--env", "SAGEMAKER_MODEL_SERVER_WORKERS=2").only("CreateModel")
    assert model["PrimaryContainer"]["Environment"] == {
        "SAGEMAKER_MODEL_SERVER_WORKERS": "2", "SERVE_MANIFEST_SHA256": HASH}


def test_manifest_sha256_must_be_a_sha256(run_driver, capsys):
    with pytest.raises(SystemExit) as exit_:
        dry(run_driver, "--model-data", MODEL_DATA, "--manifest-sha256", "abc123")
    assert exit_.value.code == 2 and "64 hex digits" in capsys.readouterr().err
    result = dry(run_driver, "--model-data", MODEL_DATA, "--manifest-sha256", HASH,
                 "--env", f"SERVE_MANIFEST_SHA256={'cd' * 32}")
    assert result.rc == 2 and "disagree" in result.err and result.recorder.calls == []


def tagged(*arns: str):
    """ListTags answers: OWNER_TAG on the given ARNs only."""
    return lambda params: {"Tags": [OWNER_TAG] if params["ResourceArn"] in arns else
                           [{"Key": "team", "Value": "ml"}]}


def teardown_responses(tags=None) -> dict:
    return {
        "DescribeEndpoint": {**endpoint("InService"), "EndpointArn": ARN["endpoint"]},
        "DescribeEndpointConfig": {
            "EndpointConfigName": "ep-1", "EndpointConfigArn": ARN["config"],
            "CreationTime": "2026-11-27T20:00:00Z",
            "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": "ep-1"}]},
        "DescribeModel": {"ModelName": "ep-1", "ModelArn": ARN["model"],
                          "CreationTime": "2026-11-27T20:00:00Z"},
        "ListTags": tags or tagged(*ARN.values()),
        "DescribeScalableTargets": {"ScalableTargets": [{
            "ServiceNamespace": "sagemaker", "ResourceId": "endpoint/ep-1/variant/AllTraffic",
            "ScalableDimension": "sagemaker:variant:DesiredInstanceCount", "MinCapacity": 1,
            "MaxCapacity": 2, "RoleARN": "arn:x", "CreationTime": "2026-11-27T20:00:00Z"}]},
        "DeregisterScalableTarget": {}, "DeleteEndpoint": {}, "DeleteEndpointConfig": {},
        "DeleteModel": {},
    }


def mutations(result) -> list:
    reads = ("Describe", "List")
    return [(c.operation, c.params) for c in result.recorder.calls
            if not c.operation.startswith(reads)]


def test_delete_tears_down_scaling_endpoint_config_and_models(run_driver):
    result = run_driver(deploy, ["--region", REGION, "--delete", "ep-1", "--yes"],
                        teardown_responses())
    assert result.rc == 0, result.err
    assert {c.params["ResourceArn"] for c in result.recorder.calls
            if c.operation == "ListTags"} == set(ARN.values())
    assert mutations(result) == [
        ("DeregisterScalableTarget", {"ServiceNamespace": "sagemaker",
                                      "ResourceId": "endpoint/ep-1/variant/AllTraffic",
                                      "ScalableDimension":
                                          "sagemaker:variant:DesiredInstanceCount"}),
        ("DeleteEndpoint", {"EndpointName": "ep-1"}),
        ("DeleteEndpointConfig", {"EndpointConfigName": "ep-1"}),
        ("DeleteModel", {"ModelName": "ep-1"}),
    ]
    assert "deleted endpoint ep-1" in result.err


def test_delete_refuses_an_endpoint_the_project_did_not_create(run_driver):
    result = run_driver(deploy, ["--region", REGION, "--delete", "ep-1", "--yes"],
                        teardown_responses(tagged(ARN["config"], ARN["model"])))
    assert result.rc == 1
    assert "refusing to delete endpoint ep-1" in result.err
    assert "sagemaker-resnet50:created-by" in result.err
    assert mutations(result) == []


def test_delete_keeps_an_untagged_model(run_driver):
    result = run_driver(deploy, ["--region", REGION, "--delete", "ep-1", "--yes"],
                        teardown_responses(tagged(ARN["endpoint"], ARN["config"])))
    assert result.rc == 0, result.err
    assert "DeleteModel" not in [op for op, _ in mutations(result)]
    assert "DeleteEndpoint" in [op for op, _ in mutations(result)]
    assert "model ep-1 kept" in result.err


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_delete_without_yes_refuses_off_a_terminal(run_driver, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))  # a pipe, not a person
    result = run_driver(deploy, ["--region", REGION, "--delete", "ep-1"], teardown_responses())
    assert result.rc == 2 and "--yes" in result.err
    assert result.recorder.calls == []


@pytest.mark.parametrize("answer, deleted", [("y\n", True), ("\n", False), ("no\n", False)])
def test_delete_asks_on_a_terminal(run_driver, monkeypatch, answer, deleted):
    monkeypatch.setattr("sys.stdin", Terminal(answer))
    result = run_driver(deploy, ["--region", REGION, "--delete", "ep-1"], teardown_responses())
    assert (result.rc == 0) is deleted, result.err
    assert bool(mutations(result)) is deleted
    assert "delete endpoint ep-1, endpoint config ep-1, model ep-1" in result.out + result.err


def test_delete_dry_run_says_what_it_would_delete(run_driver, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # no --yes needed: nothing is sent
    result = run_driver(deploy, ["--region", REGION, "--delete", "ep-1", "--dry-run"])
    assert result.rc == 0, result.err
    assert "would delete endpoint ep-1" in result.err
    assert "would delete endpoint config ep-1" in result.err
    assert "would delete model ep-1" in result.err
    assert "deleted" not in result.err
    deletes = [r["operation"] for r in result.requests() if r["operation"].startswith("Delete")]
    assert deletes == ["DeleteEndpoint", "DeleteEndpointConfig", "DeleteModel"]


@pytest.mark.parametrize(("hyperparameters", "warned"), [
    ({"lr": "0.001", "compile": "false"}, True),   # a tuning trial's job
    ({"lr": "0.001", "compile": "\"False\""}, True),  # as a client may have encoded it
    ({"lr": "0.001"}, False),                      # the image's default: compiled
    ({"lr": "0.001", "compile": "true"}, False),
])
def test_a_model_without_the_compiled_variant_is_flagged(run_driver, hyperparameters, warned):
    job = {**COMPLETED_JOB, "HyperParameters": hyperparameters}
    result = run_driver(deploy, [*AWS_SETTINGS, "--dry-run", "--name", "ep-1",
                                 "--training-job", "train-1"], {"DescribeTrainingJob": job})
    assert result.rc == 0
    assert result.only("CreateModel")["PrimaryContainer"]["ModelDataUrl"] == MODEL_DATA
    warnings = [line for line in result.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == (1 if warned else 0)
    if warned:
        assert "training job train-1 ran with compile=false" in warnings[0]
        assert "scripts/train.py --from-best" in warnings[0]
