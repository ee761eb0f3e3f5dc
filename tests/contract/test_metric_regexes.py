"""The tuning request's metric regexes, run over the log of a real tiny training run, give
back the objective value (the way SageMaker reads it: every match, the last one is final).

The training run (fixture ``real_run`` in conftest.py) needs torch, which the drivers venv does
not have: it runs in the project's training venv (``TRAIN_PYTHON``, default
``.venv/bin/python``) as a subprocess.
"""

from __future__ import annotations

import re

import pytest

from drivers import tuning_job as tune
from job_contract.metrics import OBJECTIVES, format_metric_line
from tests.contract.conftest import AWS_SETTINGS, BUCKET, RealRun


def request_regexes(run_driver, objective: str) -> tuple[dict[str, str], dict]:
    """The metric definitions and objective exactly as the tuning request carries them."""
    req = run_driver(tune, [*AWS_SETTINGS, "--data", f"s3://{BUCKET}/d", "--dry-run",
                            "--objective", objective]).only("CreateHyperParameterTuningJob")
    definitions = req["TrainingJobDefinition"]["AlgorithmSpecification"]["MetricDefinitions"]
    objective_config = req["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]
    return {d["Name"]: d["Regex"] for d in definitions}, objective_config


def sagemaker_values(regex: str, log: str) -> list[float]:
    """What SageMaker does with a metric definition: every match in the log, in order."""
    return [float(m.group(1)) for line in log.splitlines() for m in re.finditer(regex, line)]


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
@pytest.mark.slow
def test_request_regexes_recover_the_objective_from_a_real_run(run_driver, real_run: RealRun,
                                                               objective: str):
    log, manifest = real_run.log, real_run.manifest
    regexes, objective_config = request_regexes(run_driver, objective)
    assert objective_config["MetricName"] == objective
    values = sagemaker_values(regexes[objective], log)
    assert len(values) >= 2, f"{objective} found {values} in:\n{log[-2000:]}"  # per epoch + final
    key = objective.replace(":", "_")  # valid:loss -> valid_loss in the manifest
    # the final value SageMaker keeps is the one of the weights in the artifact
    assert values[-1] == pytest.approx(manifest["metrics"][key], rel=1e-5)
    # and every other metric the request defines is found too, except test:* before the end
    for name, regex in regexes.items():
        assert sagemaker_values(regex, log), f"{name} never matched"


def test_request_regexes_recover_the_objective_from_format_metric_line(run_driver):
    log = "\n".join([
        "epoch 1/2 step 4/4 loss=1.2 lr=0.001",
        format_metric_line({"train_loss": 1.1, "train_accuracy": 0.5, "valid_loss": 0.9,
                            "valid_accuracy": 0.6, "epoch_time": 3.2,
                            "images_per_sec": 40.0}, tag="epoch=1"),
        format_metric_line({"train_loss": 0.7, "train_accuracy": 0.7, "valid_loss": 1.3e-05,
                            "valid_accuracy": 0.75, "epoch_time": 3.1,
                            "images_per_sec": 41.0}, tag="epoch=2"),
        format_metric_line({"best_epoch": 2, "valid_loss": 1.3e-05, "valid_accuracy": 0.75,
                            "test_loss": 0.8, "test_accuracy": 0.7}, tag="final"),
    ])
    regexes, _ = request_regexes(run_driver, "valid:accuracy")
    assert sagemaker_values(regexes["valid:accuracy"], log) == [0.6, 0.75, 0.75]
    assert sagemaker_values(regexes["valid:loss"], log)[-1] == pytest.approx(1.3e-05)
    assert sagemaker_values(regexes["train:loss"], log) == [1.1, 0.7]  # not the progress loss
    assert sagemaker_values(regexes["best:epoch"], log) == [2.0]
