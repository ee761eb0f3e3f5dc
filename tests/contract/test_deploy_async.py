"""deploy.py --async-output: the AsyncInferenceConfig, the container's environment, the
backlog autoscaling that can reach zero instances, the refusals, and the teardown of the alarm.

AWS's pattern for scale-to-zero (docs/drivers.md links the pages): target tracking on
ApproximateBacklogSizePerInstance, and a step-scaling policy fired by a CloudWatch alarm on
HasBacklogWithoutCapacity, since target tracking alone never leaves zero instances.
"""

from __future__ import annotations

import pytest

from drivers import deploy
from tests.contract.conftest import AWS_SETTINGS, BUCKET, REGION

MODEL_DATA = f"s3://{BUCKET}/resnet-byoc/training/train-1/output/model.tar.gz"
OUTPUT = f"s3://{BUCKET}/async-out"
TOPIC = f"arn:aws:sns:{REGION}:123456789012:resnet-results"
ERRORS = f"arn:aws:sns:{REGION}:123456789012:resnet-errors"
OWNER_TAG = {"Key": "sagemaker-resnet50:created-by", "Value": "scripts/deploy.py"}
SCALABLE = {"ServiceNamespace": "sagemaker", "ResourceId": "endpoint/ep-1/variant/AllTraffic",
            "ScalableDimension": "sagemaker:variant:DesiredInstanceCount"}
ON_ENDPOINT = [{"Name": "EndpointName", "Value": "ep-1"}]


def dry(run_driver, *extra: str):
    return run_driver(deploy, [*AWS_SETTINGS, "--dry-run", "--name", "ep-1",
                               "--model-data", MODEL_DATA, *extra])


def test_async_inference_config_and_container_environment(run_driver):
    result = dry(run_driver, "--async-output", OUTPUT, "--async-success-topic", TOPIC,
                 "--async-error-topic", ERRORS, "--async-max-concurrency", "2",
                 "--env", "SAGEMAKER_MAX_PAYLOAD_IN_MB=200")
    config = result.only("CreateEndpointConfig")
    assert config["AsyncInferenceConfig"] == {
        "OutputConfig": {"S3OutputPath": OUTPUT, "S3FailurePath": f"{OUTPUT}/failures",
                         "NotificationConfig": {"SuccessTopic": TOPIC, "ErrorTopic": ERRORS}},
        "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 2}}
    [variant] = config["ProductionVariants"]
    assert variant["InitialInstanceCount"] == 1 and "ServerlessConfig" not in variant
    # the container's async limits (docs/serving-api.md); the user's own knob stays
    assert result.only("CreateModel")["PrimaryContainer"]["Environment"] == {
        "SAGEMAKER_MAX_PAYLOAD_IN_MB": "200", "SERVE_ASYNC": "true"}


def test_failure_path_flag_and_no_optional_fields(run_driver):
    config = dry(run_driver, "--async-output", OUTPUT, "--async-failure",
                 f"s3://{BUCKET}/failed").only("CreateEndpointConfig")
    assert config["AsyncInferenceConfig"] == {"OutputConfig": {
        "S3OutputPath": OUTPUT, "S3FailurePath": f"s3://{BUCKET}/failed"}}


def test_real_time_endpoint_has_no_async_config_nor_environment(run_driver):
    result = dry(run_driver)
    assert "AsyncInferenceConfig" not in result.only("CreateEndpointConfig")
    assert "SERVE_ASYNC" not in result.only("CreateModel")["PrimaryContainer"].get(
        "Environment", {})


def scaling_answers() -> dict:
    """A live deployment: InService at once; each policy gets its own ARN."""
    endpoint = {"EndpointName": "ep-1", "EndpointArn": "arn:x", "EndpointConfigName": "ep-1",
                "EndpointStatus": "InService", "CreationTime": "2026-11-27T20:00:00Z",
                "LastModifiedTime": "2026-11-27T20:00:00Z"}
    return {
        "CreateModel": {"ModelArn": "arn:x"},
        "DescribeModel": {"ModelName": "ep-1", "ModelArn": "arn:x",
                          "CreationTime": "2026-11-27T20:00:00Z"},
        "CreateEndpointConfig": {"EndpointConfigArn": "arn:x"},
        "CreateEndpoint": {"EndpointArn": "arn:x"},
        "DescribeEndpoint": endpoint,
        "RegisterScalableTarget": {},
        "PutScalingPolicy": lambda params: {"PolicyARN": f"arn:policy/{params['PolicyName']}",
                                            "Alarms": []},
        "PutMetricAlarm": {},
    }


def test_scale_to_zero_registers_tracking_step_policy_and_alarm(run_driver, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    result = run_driver(deploy, [*AWS_SETTINGS, "--name", "ep-1", "--model-data", MODEL_DATA,
                                 "--async-output", OUTPUT, "--async-scaling", "0:4",
                                 "--target-backlog", "3"], scaling_answers())
    assert result.rc == 0, result.err
    assert result.call("RegisterScalableTarget") == {**SCALABLE, "MinCapacity": 0,
                                                     "MaxCapacity": 4}
    tracking, step = [c.params for c in result.recorder.calls
                      if c.operation == "PutScalingPolicy"]
    assert tracking["PolicyType"] == "TargetTrackingScaling"
    assert {k: tracking[k] for k in SCALABLE} == SCALABLE
    config = tracking["TargetTrackingScalingPolicyConfiguration"]
    assert config["TargetValue"] == 3.0
    assert config["CustomizedMetricSpecification"] == {
        "MetricName": "ApproximateBacklogSizePerInstance", "Namespace": "AWS/SageMaker",
        "Dimensions": ON_ENDPOINT, "Statistic": "Average"}
    assert step["PolicyType"] == "StepScaling"
    steps = step["StepScalingPolicyConfiguration"]
    assert steps["AdjustmentType"] == "ChangeInCapacity"
    assert steps["StepAdjustments"] == [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}]
    alarm = result.call("PutMetricAlarm")
    assert (alarm["Namespace"], alarm["MetricName"], alarm["Dimensions"]) == (
        "AWS/SageMaker", "HasBacklogWithoutCapacity", ON_ENDPOINT)
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == (
        "GreaterThanOrEqualToThreshold", 1)
    assert alarm["AlarmActions"] == [f"arn:policy/{step['PolicyName']}"]
    assert alarm["Tags"] == [OWNER_TAG]
    ops = result.operations()
    assert ops.index("RegisterScalableTarget") > ops.index("DescribeEndpoint")  # InService
    assert "predict.py" in result.out and "--async" in result.out


def test_scaling_that_keeps_an_instance_needs_no_alarm(run_driver):
    result = dry(run_driver, "--async-output", OUTPUT, "--async-scaling", "1:3")
    assert result.only("RegisterScalableTarget")["MinCapacity"] == 1
    policy = result.only("PutScalingPolicy")
    assert policy["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] == 5.0
    assert "PutMetricAlarm" not in [r["operation"] for r in result.requests()]


@pytest.mark.parametrize("extra, message", [
    (["--async-output", OUTPUT, "--serverless", "4096:5"], "--serverless"),
    (["--async-failure", f"s3://{BUCKET}/f"], "--async-output"),
    (["--async-scaling", "0:2"], "--async-output"),
    (["--async-output", OUTPUT, "--autoscale", "1:2"], "--async-scaling"),
    (["--async-output", OUTPUT, "--async-scaling", "0:0"], "MAX >= 1"),
    (["--async-output", OUTPUT, "--async-scaling", "0:2", "--instance-count", "3"], "above"),
    (["--async-output", OUTPUT, "--async-max-concurrency", "0"], "1-1000"),
    (["--async-output", OUTPUT, "--target-backlog", "2"], "--async-scaling"),
    (["--async-output", OUTPUT, "--env", "SERVE_ASYNC=false"], "disagrees"),
])
def test_flags_that_do_not_fit_fail_before_any_call(run_driver, extra, message):
    result = dry(run_driver, *extra)
    assert result.rc == 2 and message in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1 and result.recorder.calls == []


def test_a_topic_must_be_an_sns_arn(run_driver, capsys):
    with pytest.raises(SystemExit) as exit_:
        dry(run_driver, "--async-output", OUTPUT, "--async-success-topic", "results")
    assert exit_.value.code == 2 and "SNS topic ARN" in capsys.readouterr().err


def teardown_answers(alarms: list[str]) -> dict:
    tags = {"Tags": [OWNER_TAG]}
    return {
        "DescribeEndpoint": {"EndpointName": "ep-1", "EndpointArn": "arn:e",
                             "EndpointConfigName": "ep-1", "EndpointStatus": "InService",
                             "CreationTime": "2026-11-27T20:00:00Z",
                             "LastModifiedTime": "2026-11-27T20:00:00Z"},
        "DescribeEndpointConfig": {
            "EndpointConfigName": "ep-1", "EndpointConfigArn": "arn:c",
            "CreationTime": "2026-11-27T20:00:00Z",
            "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": "ep-1"}],
            "AsyncInferenceConfig": {"OutputConfig": {"S3OutputPath": OUTPUT}}},
        "DescribeModel": {"ModelName": "ep-1", "ModelArn": "arn:m",
                          "CreationTime": "2026-11-27T20:00:00Z"},
        "ListTags": tags,
        "DescribeScalableTargets": {"ScalableTargets": [{
            **SCALABLE, "MinCapacity": 0, "MaxCapacity": 4, "RoleARN": "arn:x",
            "CreationTime": "2026-11-27T20:00:00Z"}]},
        "DescribeAlarms": {"MetricAlarms": [{"AlarmName": a} for a in alarms]},
        "DeregisterScalableTarget": {}, "DeleteAlarms": {}, "DeleteEndpoint": {},
        "DeleteEndpointConfig": {}, "DeleteModel": {},
    }


@pytest.mark.parametrize("alarms", [["ep-1-backlog-without-capacity"], []])
def test_delete_removes_the_scale_out_alarm_too(run_driver, alarms):
    result = run_driver(deploy, ["--region", REGION, "--delete", "ep-1", "--yes"],
                        teardown_answers(alarms))
    assert result.rc == 0, result.err
    assert result.call("DescribeAlarms") == {"AlarmNames": ["ep-1-backlog-without-capacity"]}
    deletes = [c.params for c in result.recorder.calls if c.operation == "DeleteAlarms"]
    assert deletes == ([{"AlarmNames": alarms}] if alarms else [])
    ops = result.operations()
    assert ops.index("DeregisterScalableTarget") < ops.index("DeleteEndpoint")
