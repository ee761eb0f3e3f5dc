"""tune.py: the CreateHyperParameterTuningJob request, and what it makes of the results."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from drivers import common as driver
from drivers import deploy
from drivers import training_job as train
from drivers import tuning_job as tune
from job_contract.hyperparameters import SPECS_BY_NAME
from job_contract.metrics import DEFAULT_OBJECTIVE, METRIC_DEFINITIONS, OBJECTIVES
from tests.contract.conftest import AWS_SETTINGS, BUCKET, REGION, ROLE, TRAIN_IMAGE

DATA = f"s3://{BUCKET}/datasets/photos5"


def ranges_by_name(request: dict) -> dict[str, tuple[str, dict]]:
    ranges = request["HyperParameterTuningJobConfig"]["ParameterRanges"]
    return {r["Name"]: (kind, r) for kind, items in ranges.items() for r in items}


def test_tuning_request_ranges_objective_strategy(run_driver):
    result = run_driver(tune, [*AWS_SETTINGS, "--data", DATA, "--dry-run",
                               "--job-name", "hpo-1", "--max-jobs", "12",
                               "--max-parallel-jobs", "3"])
    req = result.only("CreateHyperParameterTuningJob")
    config = req["HyperParameterTuningJobConfig"]
    assert req["HyperParameterTuningJobName"] == "hpo-1"
    assert config["Strategy"] == "Bayesian"
    assert config["TrainingJobEarlyStoppingType"] == "Auto"
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 12,
                                        "MaxParallelTrainingJobs": 3}
    assert config["HyperParameterTuningJobObjective"] == {
        "MetricName": DEFAULT_OBJECTIVE, "Type": OBJECTIVES[DEFAULT_OBJECTIVE]}

    ranges = ranges_by_name(req)
    kind, lr = ranges["lr"]
    assert kind == "ContinuousParameterRanges" and lr["ScalingType"] == "Logarithmic"
    assert float(lr["MinValue"]) == 1e-5 and float(lr["MaxValue"]) == 1e-2
    kind, batch = ranges["batch-size"]
    assert kind == "CategoricalParameterRanges" and batch["Values"] == ["16", "32", "64"]
    kind, epochs = ranges["epochs"]
    assert kind == "IntegerParameterRanges"
    assert (epochs["MinValue"], epochs["MaxValue"]) == ("3", "12")
    assert ranges["trainable-layers"][0] == "CategoricalParameterRanges"
    assert set(ranges["trainable-layers"][1]["Values"]) <= set(
        SPECS_BY_NAME["trainable-layers"].choices)
    kind, wd = ranges["weight-decay"]
    assert kind == "ContinuousParameterRanges" and wd["ScalingType"] == "Logarithmic"
    # every tuned name is a hyperparameter the training image accepts
    assert set(ranges) <= set(SPECS_BY_NAME)


def test_training_definition_image_metrics_channels_spot(run_driver):
    result = run_driver(tune, [*AWS_SETTINGS, "--data", DATA, "--dry-run",
                               "--job-name", "hpo-2", "--max-run", "3600", "--max-wait",
                               "7200"])
    definition = result.only("CreateHyperParameterTuningJob")["TrainingJobDefinition"]
    algo = definition["AlgorithmSpecification"]
    assert algo["TrainingImage"] == TRAIN_IMAGE  # from image_uris.json
    assert algo["TrainingInputMode"] == "File"
    assert algo["MetricDefinitions"] == METRIC_DEFINITIONS  # imported, never retyped
    assert definition["RoleArn"] == ROLE
    assert definition["InputDataConfig"] == [{
        "ChannelName": "training",
        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": DATA,
                                        "S3DataDistributionType": "FullyReplicated"}}}]
    assert definition["EnableManagedSpotTraining"] is True
    assert definition["CheckpointConfig"] == {
        "S3Uri": f"s3://{BUCKET}/resnet-byoc/checkpoints/hpo-2",
        "LocalPath": "/opt/ml/checkpoints"}
    assert definition["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600,
                                               "MaxWaitTimeInSeconds": 7200}
    assert definition["OutputDataConfig"]["S3OutputPath"].startswith(f"s3://{BUCKET}/")
    assert definition["ResourceConfig"]["InstanceCount"] == 1


def test_only_the_tuning_job_is_created_and_no_iam_call(run_driver):
    result = run_driver(tune, [*AWS_SETTINGS, "--data", DATA, "--dry-run", "--job-name",
                               "hpo-1"])
    assert "would create tuning job hpo-1" in result.err and "started" not in result.err
    services = {(r["service"], r["operation"]) for r in result.requests()}
    assert services == {("sagemaker", "CreateHyperParameterTuningJob"),
                        ("sagemaker", "DescribeHyperParameterTuningJob")}


def test_three_channels_objective_overrides_and_no_spot(run_driver):
    channels = {c: f"s3://{BUCKET}/photos/{c}" for c in ("train", "valid", "test")}
    argv = [*AWS_SETTINGS, "--dry-run", "--objective", "valid:loss", "--no-spot",
            "--range", "lr=1e-4:1e-1:linear", "--range", "batch-size=8,128",
            "--range", "epochs=off", "--range", "weight-decay=off",
            "--set", "epochs=5", "--set", "image-size=160",
            *[a for c, uri in channels.items() for a in ("--channel", f"{c}={uri}")]]
    req = run_driver(tune, argv).only("CreateHyperParameterTuningJob")
    config, definition = req["HyperParameterTuningJobConfig"], req["TrainingJobDefinition"]
    assert config["HyperParameterTuningJobObjective"] == {"MetricName": "valid:loss",
                                                          "Type": "Minimize"}
    ranges = ranges_by_name(req)
    assert set(ranges) == {"lr", "batch-size", "trainable-layers"}
    assert ranges["lr"][1]["ScalingType"] == "Linear"
    assert ranges["batch-size"][1]["Values"] == ["8", "128"]
    assert definition["StaticHyperParameters"] == {"epochs": "5", "image-size": "160",
                                                   "compile": "false", "int8": "false"}
    assert {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
            for c in definition["InputDataConfig"]} == channels
    assert "EnableManagedSpotTraining" not in definition or \
        definition["EnableManagedSpotTraining"] is False
    assert "CheckpointConfig" not in definition
    assert "MaxWaitTimeInSeconds" not in definition["StoppingCondition"]


@pytest.mark.parametrize("extra, static", [
    # trials are compared, not served: no compiled (or int8) variant by default
    ([], {"compile": "false", "int8": "false"}),
    (["--serving-variants"], {}),  # the image's defaults: compile=true
    (["--set", "compile=true"], {"compile": "true", "int8": "false"}),  # asked for by name
    (["--set", "int8=true", "--serving-variants"], {"int8": "true"}),
    (["--range", "compile=true,false"], {"int8": "false"}),  # tuned, so not fixed
])
def test_trials_skip_the_serving_variants_unless_asked(run_driver, extra, static):
    definition = run_driver(tune, [*AWS_SETTINGS, "--data", DATA, "--dry-run", *extra]) \
        .only("CreateHyperParameterTuningJob")["TrainingJobDefinition"]
    assert definition.get("StaticHyperParameters", {}) == static


@pytest.mark.parametrize("spec, message", [
    ("lr=0:1:log", "lr"),                  # below the image's own lower bound
    ("lr=1e-3:1e-4", "LOW must be below HIGH"),
    ("trainable-layers=0,7", "trainable-layers"),
    ("batch-size=0,16", "batch-size"),
    ("optimizer=1:2", "list of choices"),
    ("nonsense=1:2", "unknown hyperparameter"),
])
def test_ranges_are_checked_against_the_image_table(run_driver, spec, message):
    result = run_driver(tune, [*AWS_SETTINGS, "--data", DATA, "--dry-run", "--range", spec])
    assert result.rc == 2
    assert message in result.err
    assert result.recorder.calls == [] and result.out == ""


def test_data_is_required_and_must_be_s3(run_driver):
    result = run_driver(tune, [*AWS_SETTINGS, "--dry-run"])
    assert result.rc == 2 and "--data" in result.err and result.recorder.calls == []
    result = run_driver(tune, [*AWS_SETTINGS, "--dry-run", "--data", "/local/photos"])
    assert result.rc == 2 and "s3://" in result.err and result.recorder.calls == []


# -- results: the live table, the best job and the file train.py / deploy.py read -------------

BEST = "hpo-3-002-abcdef12"


def tuning_description(status: str) -> dict:
    return {
        "HyperParameterTuningJobName": "hpo-3",
        "HyperParameterTuningJobArn":
            f"arn:aws:sagemaker:{REGION}:1:hyper-parameter-tuning-job/hpo-3",
        "HyperParameterTuningJobStatus": status,
        "CreationTime": "2026-11-27T20:00:00Z",
        "HyperParameterTuningJobConfig": {
            "Strategy": "Bayesian",
            "HyperParameterTuningJobObjective": {"Type": "Maximize",
                                                 "MetricName": "valid:accuracy"},
            "ResourceLimits": {"MaxNumberOfTrainingJobs": 2, "MaxParallelTrainingJobs": 2},
            "ParameterRanges": {
                "ContinuousParameterRanges": [{"Name": "lr", "MinValue": "1e-05",
                                               "MaxValue": "0.01",
                                               "ScalingType": "Logarithmic"}],
                "CategoricalParameterRanges": [{"Name": "batch-size",
                                                "Values": ["16", "32"]}],
            },
        },
        "TrainingJobStatusCounters": {"Completed": 2, "InProgress": 0},
        "ObjectiveStatusCounters": {"Succeeded": 2},
        "BestTrainingJob": {
            "TrainingJobName": BEST, "TrainingJobArn": "arn:x",
            "CreationTime": "2026-11-27T20:00:00Z", "TrainingJobStatus": "Completed",
            "TunedHyperParameters": {"lr": "0.00031", "batch-size": "\"32\""},
            "FinalHyperParameterTuningJobObjectiveMetric": {"MetricName": "valid:accuracy",
                                                            "Value": 0.875},
        },
    }


TRIALS = {"TrainingJobSummaries": [
    {"TrainingJobName": "hpo-3-001-12345678", "TrainingJobArn": "arn:x",
     "CreationTime": "2026-11-27T20:00:00Z", "TrainingJobStatus": "Completed",
     "TunedHyperParameters": {"lr": "0.005", "batch-size": "\"16\""},
     "FinalHyperParameterTuningJobObjectiveMetric": {"MetricName": "valid:accuracy",
                                                     "Value": 0.5}},
    {"TrainingJobName": BEST, "TrainingJobArn": "arn:x",
     "CreationTime": "2026-11-27T20:01:00Z", "TrainingJobStatus": "Completed",
     "TunedHyperParameters": {"lr": "0.00031", "batch-size": "\"32\""},
     "FinalHyperParameterTuningJobObjectiveMetric": {"MetricName": "valid:accuracy",
                                                     "Value": 0.875}},
]}

BEST_TRAINING_JOB = {
    "TrainingJobName": BEST, "TrainingJobArn": "arn:x", "TrainingJobStatus": "Completed",
    "SecondaryStatus": "Completed", "CreationTime": "2026-11-27T20:01:00Z",
    "ModelArtifacts": {"S3ModelArtifacts": f"s3://{BUCKET}/out/{BEST}/output/model.tar.gz"},
    "AlgorithmSpecification": {"TrainingImage": TRAIN_IMAGE, "TrainingInputMode": "File"},
    "ResourceConfig": {"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 1,
                       "VolumeSizeInGB": 50},
    "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
    "HyperParameters": {"lr": "0.00031", "batch-size": "\"32\"", "image-size": "224",
                        "trainable-layers": "\"all\"",
                        "_tuning_objective_metric": "\"valid:accuracy\"",
                        "sagemaker_estimator_class_name": "\"x\""},
    "FinalMetricDataList": [
        {"MetricName": "valid:accuracy", "Value": 0.875, "Timestamp": "2026-11-27T20:09:00Z"},
        {"MetricName": "valid:loss", "Value": 0.41, "Timestamp": "2026-11-27T20:09:00Z"}],
}


def results_responses(status: str = "Completed") -> dict:
    return {
        "DescribeHyperParameterTuningJob": tuning_description(status),
        "ListTrainingJobsForHyperParameterTuningJob": TRIALS,
        "DescribeTrainingJob": BEST_TRAINING_JOB,
    }


def test_wait_shows_trials_and_writes_typed_best_job(run_driver, tmp_path: Path):
    out = tmp_path / "best.json"
    result = run_driver(tune, ["--region", REGION, "--attach", "hpo-3", "--wait",
                               "--poll", "0", "--best-out", str(out)], results_responses())
    assert result.rc == 0, result.err
    # not a terminal: one line per trial with its tuned values and objective
    assert f"{BEST}  Completed  lr=0.00031  batch-size=32  objective=0.875" in result.err
    best = json.loads(out.read_text())
    assert best["training_job_name"] == BEST
    assert best["objective"] == {"metric": "valid:accuracy", "type": "Maximize",
                                 "value": 0.875}
    assert best["hyperparameters"] == {"lr": 0.00031, "batch-size": 32, "image-size": 224,
                                       "trainable-layers": "all"}
    assert isinstance(best["hyperparameters"]["batch-size"], int)
    assert best["tuned_hyperparameters"] == ["batch-size", "lr"]
    assert best["final_metrics"] == {"valid:accuracy": 0.875, "valid:loss": 0.41}
    assert best["model_data"].endswith("/output/model.tar.gz")
    assert "best training job: " + BEST in result.out
    # nothing was created
    assert not [op for op in result.operations() if op.startswith("Create")]

    # train.py --from-best starts from those values (--set still wins)
    train_req = run_driver(train, [*AWS_SETTINGS, "--data", DATA, "--dry-run",
                                   "--from-best", str(out), "--set", "epochs=4"]) \
        .only("CreateTrainingJob")
    assert train_req["HyperParameters"] == {"batch-size": "32", "compile": "true", "epochs": "4",
                                            "image-size": "224", "int8": "false",
                                            "lr": "0.00031", "trainable-layers": "all"}
    # deploy.py --from-best serves that job's artifact (compiled: the image's default)
    deployed = run_driver(deploy, [*AWS_SETTINGS, "--dry-run", "--from-best", str(out)])
    model = deployed.only("CreateModel")
    assert model["PrimaryContainer"]["ModelDataUrl"] == best["model_data"]
    assert "warning:" not in deployed.err


def skipped_trial_responses() -> dict:
    """A best trial of a tuning job started without --serving-variants: its static
    hyperparameters hold compile=false and int8=false, as the tuning request set them."""
    responses = results_responses()
    job = json.loads(json.dumps(BEST_TRAINING_JOB))
    job["HyperParameters"].update({"compile": "false", "int8": "false"})
    responses["DescribeTrainingJob"] = job
    return responses


def test_from_best_trains_the_best_trial_with_the_compiled_variant(run_driver, tmp_path):
    out = tmp_path / "best.json"
    result = run_driver(tune, ["--region", REGION, "--attach", "hpo-3", "--wait", "--poll", "0",
                               "--best-out", str(out)], skipped_trial_responses())
    assert result.rc == 0, result.err
    assert json.loads(out.read_text())["hyperparameters"]["compile"] is False

    def train_request(*extra: str) -> dict:
        return run_driver(train, [*AWS_SETTINGS, "--data", DATA, "--dry-run", "--from-best",
                                  str(out), *extra]).only("CreateTrainingJob")["HyperParameters"]

    # the best trial's tuned values, and the compiled variant the trial skipped
    assert train_request() == {"batch-size": "32", "compile": "true", "image-size": "224",
                               "int8": "false", "lr": "0.00031", "trainable-layers": "all"}
    assert train_request("--set", "compile=false")["compile"] == "false"  # --set still wins

    # deploying the trial's own artifact works, and says in one line what it lacks
    deployed = run_driver(deploy, [*AWS_SETTINGS, "--dry-run", "--from-best", str(out)])
    assert deployed.rc == 0 and deployed.only("CreateModel")
    warnings = [line for line in deployed.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert "compile=false" in warnings[0] and "no compiled variant" in warnings[0]
    assert "scripts/train.py --from-best" in warnings[0]


def test_failed_tuning_job_without_best_is_reported(run_driver, tmp_path: Path):
    responses = results_responses("Failed")
    del responses["DescribeHyperParameterTuningJob"]["BestTrainingJob"]
    responses["DescribeHyperParameterTuningJob"]["FailureReason"] = "All training jobs failed"
    result = run_driver(tune, ["--region", REGION, "--attach", "hpo-3", "--wait",
                               "--poll", "0", "--best-out", str(tmp_path / "b.json")],
                        responses)
    assert result.rc == 1
    assert "All training jobs failed" in result.err
    assert not (tmp_path / "b.json").exists()


def test_objective_value_is_finite_in_canned_results():
    assert math.isfinite(tuning_description("Completed")["BestTrainingJob"][
        "FinalHyperParameterTuningJobObjectiveMetric"]["Value"])


def test_network_isolation(run_driver):
    def definition(*extra: str) -> dict:
        return run_driver(tune, [*AWS_SETTINGS, "--data", DATA, "--dry-run", *extra]) \
            .only("CreateHyperParameterTuningJob")["TrainingJobDefinition"]

    assert definition("--network-isolation")["EnableNetworkIsolation"] is True
    assert definition().get("EnableNetworkIsolation") in (None, False)


@pytest.mark.parametrize("extra, refused", [
    ([], True),                                    # the image's default, weights=imagenet
    (["--range", "weights=imagenet,none"], True),  # some trials would need them
    (["--set", "weights=none"], False),
    (["--image-has-imagenet-weights"], False),
])
def test_imagenet_weights_must_be_in_the_image(run_driver, isolated_aws, extra, refused):
    isolated_aws.write_text(json.dumps({"train": TRAIN_IMAGE, "imagenet_weights": False}))
    result = run_driver(tune, [*AWS_SETTINGS, "--data", DATA, "--dry-run",
                               "--network-isolation", *extra])
    if refused:
        assert result.rc == 2 and result.recorder.calls == []
        assert "weights=imagenet" in result.err and "build_and_push.sh" in result.err
    else:
        assert result.rc == 0, result.err


def trial(name: str, status: str, lr: str, objective: float | None = None) -> dict:
    summary = {"TrainingJobName": name, "TrainingJobArn": "arn:x",
               "CreationTime": "2026-11-27T20:00:00Z", "TrainingJobStatus": status,
               "TunedHyperParameters": {"lr": lr, "batch-size": "\"16\""}}
    if objective is not None:
        summary["FinalHyperParameterTuningJobObjectiveMetric"] = {
            "MetricName": "valid:accuracy", "Value": objective}
    return summary


def changing_job(polls: list[tuple[str, list[dict]]]) -> dict:
    """Answers for a tuning job whose status and trials change at each poll; the trials list
    comes in pages of one (NextToken), as the paginator must follow."""
    state = {"poll": -1}

    def describe(params: dict) -> dict:
        state["poll"] = min(state["poll"] + 1, len(polls) - 1)
        return tuning_description(polls[state["poll"]][0])

    def list_page(params: dict) -> dict:
        trials = polls[state["poll"]][1]
        i = int(params.get("NextToken", "0"))
        page = {"TrainingJobSummaries": trials[i:i + 1]}
        if i + 1 < len(trials):
            page["NextToken"] = str(i + 1)
        return page

    return {"DescribeHyperParameterTuningJob": describe,
            "ListTrainingJobsForHyperParameterTuningJob": list_page,
            "DescribeTrainingJob": BEST_TRAINING_JOB}


POLLS = [
    ("InProgress", [trial("t-1", "InProgress", "0.001"), trial("t-2", "InProgress", "0.01")]),
    ("InProgress", [trial("t-1", "Completed", "0.001", 0.5),
                    trial("t-2", "InProgress", "0.01")]),
    ("Completed", [trial("t-1", "Completed", "0.001", 0.5),
                   trial("t-2", "Completed", "0.01", 0.75)]),
]


def test_wait_in_a_log_prints_one_line_per_change_and_no_escape_codes(run_driver, tmp_path):
    result = run_driver(tune, ["--region", REGION, "--attach", "hpo-3", "--wait", "--poll", "0",
                               "--best-out", str(tmp_path / "b.json")], changing_job(POLLS))
    assert result.rc == 0, result.err
    assert "\x1b" not in result.err
    lines = result.err.splitlines()
    t1 = [line for line in lines if line.strip().startswith("t-1 ")]
    t2 = [line for line in lines if line.strip().startswith("t-2 ")]
    # both pages of every poll were read; a row is printed when it changes, not every poll
    assert [line.split()[1] for line in t1] == ["InProgress", "Completed"]
    assert [line.split()[1] for line in t2] == ["InProgress", "Completed"]
    assert t2[-1].endswith("objective=0.75")
    assert sum("hpo-3: InProgress" in line for line in lines) == 1
    assert sum("hpo-3: Completed" in line for line in lines) == 1
    pages = [c.params for c in result.recorder.calls
             if c.operation == "ListTrainingJobsForHyperParameterTuningJob"]
    assert len(pages) == 6 and pages[1]["NextToken"] == "1"


def test_wait_on_a_terminal_draws_a_live_table(run_driver, monkeypatch, tmp_path):
    import io
    import re

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    monkeypatch.setattr("sys.stderr", screen)
    result = run_driver(tune, ["--region", REGION, "--attach", "hpo-3", "--wait", "--poll", "0",
                               "--best-out", str(tmp_path / "b.json")], changing_job(POLLS))
    assert result.rc == 0
    drawn = screen.getvalue()
    assert "\x1b[H\x1b[2J" not in drawn  # no clearing of the user's screen
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", drawn)
    assert "objective" in text and "t-2" in text and "0.75" in text


def test_wait_gives_up_after_the_timeout(run_driver, monkeypatch, tmp_path):
    clock = {"now": 0.0}
    monkeypatch.setattr(tune.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(tune.time, "sleep", lambda s: clock.update(now=clock["now"] + s))
    stuck = changing_job([POLLS[0]])
    result = run_driver(tune, ["--region", REGION, "--attach", "hpo-3", "--wait", "--poll", "30",
                               "--timeout", "100", "--best-out", str(tmp_path / "b.json")],
                        stuck)
    assert result.rc == 1
    assert "hpo-3 has not ended after 100 s" in result.err and "--attach hpo-3" in result.err
    assert result.operations().count("DescribeHyperParameterTuningJob") == 5  # 0,30,60,90,120
    assert not (tmp_path / "b.json").exists()


def test_default_timeout_follows_the_jobs_own_limits():
    job = tuning_description("InProgress")
    job["TrainingJobDefinition"] = {"StoppingCondition": {"MaxRuntimeInSeconds": 3600,
                                                          "MaxWaitTimeInSeconds": 7200}}
    job["HyperParameterTuningJobConfig"]["ResourceLimits"] = {
        "MaxNumberOfTrainingJobs": 5, "MaxParallelTrainingJobs": 2}
    assert tune.default_timeout(job) == 3 * (7200 + driver.WAIT_SLACK_S)


def test_sagemaker_ranges_come_from_the_same_objects():
    """The SDK's parameter ranges are built from the one search-space table (moved here from
    tests/unit: the host venv has no SDK, so there it could only skip)."""
    from sagemaker.core import parameter

    from drivers.search_space import build_ranges

    lr = build_ranges({}, {})["lr"].to_sdk()
    assert isinstance(lr, parameter.ContinuousParameter)
    assert (lr.min_value, lr.max_value) == (1e-5, 1e-2)
