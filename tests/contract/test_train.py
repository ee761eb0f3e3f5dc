"""train.py: the CreateTrainingJob request (TensorBoard by default; Debugger hook, rules and
profiler with --debugger), network isolation, the ImageNet-weights check, waiting."""

from __future__ import annotations

import json

import pytest

from drivers import training_job as train
from job_contract.metrics import METRIC_DEFINITIONS
from tests.contract.conftest import AWS_SETTINGS, BUCKET, REGION, SERVE_IMAGE, TRAIN_IMAGE

DATA = f"s3://{BUCKET}/datasets/photos5"
# the Debugger rule image account of eu-west-1 (SageMaker's published table)
RULE_IMAGE = f"929884845733.dkr.ecr.{REGION}.amazonaws.com/sagemaker-debugger-rules:latest"


@pytest.fixture
def request_(run_driver):
    def make(*extra: str) -> dict:
        result = run_driver(train, [*AWS_SETTINGS, "--data", DATA, "--dry-run",
                                    "--job-name", "train-1", *extra])
        assert [r["operation"] for r in result.requests()] == ["CreateTrainingJob",
                                                             "DescribeTrainingJob"]
        return result.only("CreateTrainingJob")
    return make


DEBUGGER_FIELDS = ("DebugHookConfig", "DebugRuleConfigurations", "ProfilerConfig",
                   "ProfilerRuleConfigurations")


def test_default_request_has_no_debugger_or_profiler_settings(run_driver):
    # SageMaker Debugger is closed to accounts opened after 2026-07-30: the default request
    # must be one every account can send
    result = run_driver(train, [*AWS_SETTINGS, "--data", DATA, "--dry-run", "--job-name",
                                "train-1"])
    req = result.only("CreateTrainingJob")
    for key in DEBUGGER_FIELDS:
        assert key not in req
    assert req["TensorBoardOutputConfig"]["S3OutputPath"].endswith("/train-1/tensorboard")
    assert "would create training job train-1" in result.err
    assert "started" not in result.err


def test_debug_hook_saves_losses_every_step_and_tensors_at_an_interval(request_):
    hook = request_("--debugger", "--tensor-interval", "50")["DebugHookConfig"]
    assert hook["S3OutputPath"] == f"s3://{BUCKET}/resnet-byoc/training"
    collections = {c["CollectionName"]: c["CollectionParameters"]
                   for c in hook["CollectionConfigurations"]}
    assert collections["losses"] == {"save_interval": "1"}
    assert collections["weights"] == {"save_interval": "50"}
    assert collections["gradients"] == {"save_interval": "50"}


def test_builtin_rules_with_the_region_rule_image(request_):
    rules = request_("--debugger")["DebugRuleConfigurations"]
    by_name = {r["RuleConfigurationName"]: r for r in rules}
    assert set(by_name) >= {"LossNotDecreasing", "Overfit", "VanishingGradient"}
    for name, rule in by_name.items():
        assert rule["RuleEvaluatorImage"] == RULE_IMAGE  # not the SDK's placeholder
        assert rule["RuleParameters"]["rule_to_invoke"] == name


def test_profiler_config_and_report_rule(request_):
    req = request_("--debugger", "--profiler-interval-ms", "1000")
    assert req["ProfilerConfig"] == {"S3OutputPath": f"s3://{BUCKET}/resnet-byoc/training",
                                     "ProfilingIntervalInMilliseconds": 1000}
    [report] = req["ProfilerRuleConfigurations"]
    assert report["RuleConfigurationName"] == "ProfilerReport"
    assert report["RuleEvaluatorImage"] == RULE_IMAGE
    assert report["RuleParameters"] == {"rule_to_invoke": "ProfilerReport"}


def test_tensorboard_metrics_image_and_channels(request_):
    req = request_("--set", "epochs=3", "--set", "lr=0.01")
    assert req["TensorBoardOutputConfig"] == {
        "LocalPath": "/opt/ml/output/tensorboard",
        "S3OutputPath": f"s3://{BUCKET}/resnet-byoc/training/train-1/tensorboard"}
    algo = req["AlgorithmSpecification"]
    assert algo["TrainingImage"] == TRAIN_IMAGE
    assert algo["MetricDefinitions"] == METRIC_DEFINITIONS
    assert algo["EnableSageMakerMetricsTimeSeries"] is True
    assert req["HyperParameters"] == {"epochs": "3", "lr": "0.01"}
    assert req["InputDataConfig"][0]["ChannelName"] == "training"
    assert req["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == DATA
    assert "EnableManagedSpotTraining" not in req and "CheckpointConfig" not in req


def test_no_debugger_sends_no_debugger_or_profiler_settings(request_):
    req = request_("--no-debugger")
    for key in DEBUGGER_FIELDS:
        assert key not in req
    assert "TensorBoardOutputConfig" in req  # our own output, not Debugger's


def refused(message: str, code: str = "ValidationException") -> dict:
    return {"CreateTrainingJob": {"__status__": 400, "Error": {"Code": code,
                                                                 "Message": message}}}


@pytest.mark.parametrize("code, message", [
    ("ValidationException", "Amazon SageMaker Debugger is not available for this account. "
                            "Remove DebugHookConfig and DebugRuleConfigurations."),
    ("AccessDeniedException", "Access to SageMaker Debugger is denied for new customers"),
    ("ValidationException", "ProfilerConfig is not supported for this account"),
    ("AccessDenied", "The account is not allow-listed\nfor the debugger feature"),
])
def test_debugger_refusal_says_in_one_line_to_drop_the_flag(run_driver, code, message):
    result = run_driver(train, [*AWS_SETTINGS, "--data", DATA, "--job-name", "train-1",
                                "--debugger"], refused(message, code))
    assert result.rc == 1
    [line] = result.err.strip().splitlines()
    assert "without --debugger" in line and code in line
    assert result.operations() == ["CreateTrainingJob"]


def test_other_refusals_are_not_blamed_on_debugger(run_driver):
    message = "Could not assume role arn:aws:iam::123456789012:role/SageMakerExecution"
    with_flag = run_driver(train, [*AWS_SETTINGS, "--data", DATA, "--debugger"],
                           refused(message))
    assert with_flag.rc == 1 and message in with_flag.err and "--debugger" not in with_flag.err
    # without --debugger nothing of Debugger's was asked for: AWS's words only
    plain = run_driver(train, [*AWS_SETTINGS, "--data", DATA],
                       refused("Debugger is not available for this account"))
    assert plain.rc == 1 and "without --debugger" not in plain.err


def test_analyze_needs_the_debugger_output(run_driver):
    result = run_driver(train, [*AWS_SETTINGS, "--data", DATA, "--analyze"])
    assert result.rc == 2 and "--debugger" in result.err and result.recorder.calls == []


def test_network_isolation(request_):
    assert request_("--network-isolation")["EnableNetworkIsolation"] is True
    assert "EnableNetworkIsolation" not in request_()


def write_uris(path, **fields) -> None:
    path.write_text(json.dumps({"train": TRAIN_IMAGE, "serve": SERVE_IMAGE, **fields}))


@pytest.mark.parametrize("fields, extra, hint", [
    ({"imagenet_weights": False}, [], "imagenet_weights: false"),
    ({}, [], "nothing says"),  # an image_uris.json from before the key existed
    ({"imagenet_weights": True}, ["--image-uri", TRAIN_IMAGE.replace(":2026", ":x2026")],
     "nothing says"),  # an image the build file does not describe
    ({"imagenet_weights": True}, ["--no-image-has-imagenet-weights"], "has none"),
])
def test_imagenet_weights_must_be_in_the_image(run_driver, isolated_aws, fields, extra, hint):
    write_uris(isolated_aws, **fields)
    for net in ([], ["--network-isolation"]):  # the job never downloads them
        result = run_driver(train, [*AWS_SETTINGS, "--data", DATA, "--dry-run", *extra, *net])
        assert result.rc == 2 and result.recorder.calls == [] and result.out == ""
        assert hint in result.err
        assert "build_and_push.sh" in result.err and "weights=none" in result.err


@pytest.mark.parametrize("fields, extra", [
    ({}, ["--set", "weights=none"]),
    ({"imagenet_weights": False}, ["--set", "weights=none", "--network-isolation"]),
    ({}, ["--image-has-imagenet-weights"]),
    ({"imagenet_weights": True}, ["--set", "weights=imagenet"]),
])
def test_imagenet_weights_check_passes(run_driver, isolated_aws, fields, extra):
    write_uris(isolated_aws, **fields)
    result = run_driver(train, [*AWS_SETTINGS, "--data", DATA, "--dry-run", *extra])
    assert result.rc == 0, result.err


def test_spot_adds_checkpoints_and_max_wait(request_):
    req = request_("--spot", "--max-run", "3600", "--max-wait", "7200")
    assert req["EnableManagedSpotTraining"] is True
    assert req["CheckpointConfig"] == {"S3Uri": f"s3://{BUCKET}/resnet-byoc/checkpoints/train-1",
                                       "LocalPath": "/opt/ml/checkpoints"}
    assert req["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600,
                                        "MaxWaitTimeInSeconds": 7200}


def test_bad_hyperparameter_is_refused_before_any_call(run_driver):
    result = run_driver(train, [*AWS_SETTINGS, "--data", DATA, "--dry-run",
                                "--set", "batch-size=0"])
    assert result.rc == 2 and "batch-size" in result.err and result.recorder.calls == []


def _described_job(name: str, status: str, artifact: str = "", **extra: object) -> dict:
    """A DescribeTrainingJob response with the fields the driver reads."""
    return {"TrainingJobName": name, "TrainingJobArn": "arn:x", "TrainingJobStatus": status,
            "SecondaryStatus": "Training" if status == "InProgress" else status,
            "CreationTime": "2026-11-27T20:00:00Z",
            "ModelArtifacts": {"S3ModelArtifacts": artifact},
            "AlgorithmSpecification": {"TrainingImage": TRAIN_IMAGE, "TrainingInputMode": "File"},
            "ResourceConfig": {"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 1,
                               "VolumeSizeInGB": 50},
            "StoppingCondition": {"MaxRuntimeInSeconds": 3600}, **extra}


def test_wait_reports_failure_reason(run_driver):
    failed = _described_job(
        "train-2", "Failed",
        FailureReason="AlgorithmError: no class folders in /opt/ml/input/data/training/train",
        DebugRuleEvaluationStatuses=[{"RuleConfigurationName": "LossNotDecreasing",
                                      "RuleEvaluationStatus": "Stopped"}])
    result = run_driver(train, ["--region", REGION, "--attach", "train-2", "--wait"],
                        {"DescribeTrainingJob": failed})
    assert result.rc == 1
    assert "no class folders" in result.out
    assert "LossNotDecreasing" in result.out


def test_wait_polls_until_the_job_ends_when_logs_cannot_be_read(run_driver, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    base = _described_job("train-3", "InProgress", f"s3://{BUCKET}/m/model.tar.gz")
    statuses = iter(["InProgress", "InProgress", "InProgress"])
    responses = {
        "DescribeTrainingJob": lambda p: {**base,
                                          "TrainingJobStatus": next(statuses, "Completed")},
        "DescribeLogStreams": {"__status__": 400, "Error": {
            "Code": "AccessDeniedException", "Message": "not allowed: logs:DescribeLogStreams"}},
    }
    result = run_driver(train, ["--region", REGION, "--attach", "train-3", "--wait"], responses)
    assert result.rc == 0, result.err
    assert "Completed" in result.out and "model.tar.gz" in result.out


def test_wait_gives_up_after_the_timeout(run_driver, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    job = _described_job("train-4", "InProgress")
    responses = {
        "DescribeTrainingJob": job,
        "DescribeLogStreams": {"__status__": 400, "Error": {
            "Code": "AccessDeniedException", "Message": "not allowed: logs:DescribeLogStreams"}},
    }
    result = run_driver(train, ["--region", REGION, "--attach", "train-4", "--wait",
                                "--timeout", "90"], responses)
    assert result.rc == 1
    assert "train-4 has not ended after 90 s" in result.err and "--attach train-4" in result.err
    # boto3's waiter polled every 30 s: 3 attempts for 90 s (plus the first describes)
    assert 3 <= result.operations().count("DescribeTrainingJob") <= 6
