"""train.py: Debugger hook, rules, profiler and TensorBoard in the CreateTrainingJob request."""

from __future__ import annotations

import pytest

from container_train.metrics import METRIC_DEFINITIONS
from scripts import train
from tests.contract.conftest import AWS_SETTINGS, BUCKET, REGION, TRAIN_IMAGE

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


def test_debug_hook_saves_losses_every_step_and_tensors_at_an_interval(request_):
    hook = request_("--tensor-interval", "50")["DebugHookConfig"]
    assert hook["S3OutputPath"] == f"s3://{BUCKET}/resnet-byoc/training"
    collections = {c["CollectionName"]: c["CollectionParameters"]
                   for c in hook["CollectionConfigurations"]}
    assert collections["losses"] == {"save_interval": "1"}
    assert collections["weights"] == {"save_interval": "50"}
    assert collections["gradients"] == {"save_interval": "50"}


def test_builtin_rules_with_the_region_rule_image(request_):
    rules = request_()["DebugRuleConfigurations"]
    by_name = {r["RuleConfigurationName"]: r for r in rules}
    assert set(by_name) >= {"LossNotDecreasing", "Overfit", "VanishingGradient"}
    for name, rule in by_name.items():
        assert rule["RuleEvaluatorImage"] == RULE_IMAGE  # not the SDK's placeholder
        assert rule["RuleParameters"]["rule_to_invoke"] == name


def test_profiler_config_and_report_rule(request_):
    req = request_("--profiler-interval-ms", "1000")
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
    for key in ("DebugHookConfig", "DebugRuleConfigurations", "ProfilerConfig",
                "ProfilerRuleConfigurations"):
        assert key not in req
    assert "TensorBoardOutputConfig" in req  # our own output, not Debugger's


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


def test_wait_reports_failure_reason(run_driver):
    failed = {
        "TrainingJobName": "train-2", "TrainingJobArn": "arn:x", "TrainingJobStatus": "Failed",
        "SecondaryStatus": "Failed", "CreationTime": "2026-11-27T20:00:00Z",
        "FailureReason": "AlgorithmError: no class folders in /opt/ml/input/data/training/train",
        "ModelArtifacts": {"S3ModelArtifacts": ""},
        "AlgorithmSpecification": {"TrainingImage": TRAIN_IMAGE, "TrainingInputMode": "File"},
        "ResourceConfig": {"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 1,
                           "VolumeSizeInGB": 50},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "DebugRuleEvaluationStatuses": [{"RuleConfigurationName": "LossNotDecreasing",
                                         "RuleEvaluationStatus": "Stopped"}],
    }
    result = run_driver(train, ["--region", REGION, "--attach", "train-2", "--wait"],
                        {"DescribeTrainingJob": failed})
    assert result.rc == 1
    assert "no class folders" in result.out
    assert "LossNotDecreasing" in result.out


def test_wait_polls_until_the_job_ends_when_logs_cannot_be_read(run_driver, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    base = {"TrainingJobName": "train-3", "TrainingJobArn": "arn:x",
            "SecondaryStatus": "Training", "CreationTime": "2026-11-27T20:00:00Z",
            "ModelArtifacts": {"S3ModelArtifacts": f"s3://{BUCKET}/m/model.tar.gz"},
            "AlgorithmSpecification": {"TrainingImage": TRAIN_IMAGE,
                                       "TrainingInputMode": "File"},
            "ResourceConfig": {"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 1,
                               "VolumeSizeInGB": 50},
            "StoppingCondition": {"MaxRuntimeInSeconds": 3600}}
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
