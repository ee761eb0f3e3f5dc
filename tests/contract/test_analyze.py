"""train.py --analyze: download a job's Debugger output from S3 and plot train vs eval loss,
on the output of a real tiny training run with the smdebug hook (S3 emulated by moto)."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from drivers import training_job as train
from tests.contract.conftest import REGION, TRAIN_IMAGE, RealRun

BUCKET = "debug-bucket"
JOB = "train-dbg-1"


def assert_hook_worked(run: RealRun) -> None:
    """smdebug disables itself on an error and training goes on: say so, not 'no tensors'."""
    marker = "SMDebug error has occurred"
    if marker in run.log:
        at = run.log.index(marker)
        pytest.fail("the training code's smdebug hook failed, so a real job would upload no "
                    "debug tensors (train.py's rules and --analyze get nothing):\n"
                    + run.log[at:at + 1500])


def completed_job(hook_path: str | None) -> dict:
    job = {
        "TrainingJobName": JOB, "TrainingJobArn": "arn:x", "TrainingJobStatus": "Completed",
        "SecondaryStatus": "Completed", "CreationTime": "2026-11-27T20:00:00Z",
        "ModelArtifacts": {"S3ModelArtifacts": f"s3://{BUCKET}/out/{JOB}/output/model.tar.gz"},
        "AlgorithmSpecification": {"TrainingImage": TRAIN_IMAGE, "TrainingInputMode": "File"},
        "ResourceConfig": {"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 1,
                           "VolumeSizeInGB": 50},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "FinalMetricDataList": [{"MetricName": "valid:loss", "Value": 1.5,
                                 "Timestamp": "2026-11-27T20:09:00Z"}],
    }
    if hook_path:
        job["DebugHookConfig"] = {"S3OutputPath": hook_path}
    return job


@pytest.mark.slow
def test_analyze_downloads_debug_output_and_plots(run_driver, real_run: RealRun, moto_aws,
                                                  monkeypatch, tmp_path: Path):
    assert_hook_worked(real_run)
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    files = [p for p in real_run.debug_output.rglob("*") if p.is_file()]
    assert files, "the smdebug hook wrote nothing"
    for path in files:  # where SageMaker puts it: <S3OutputPath>/<job>/debug-output/
        key = f"prefix/training/{JOB}/debug-output/{path.relative_to(real_run.debug_output)}"
        s3.upload_file(str(path), BUCKET, key)
    monkeypatch.setenv("SMDEBUG_PYTHON", real_run.python)
    result = run_driver(train, ["--region", REGION, "--attach", JOB, "--analyze",
                                "--analyze-dir", str(tmp_path / "debug")],
                        {"DescribeTrainingJob": completed_job(f"s3://{BUCKET}/prefix/training")})
    assert result.rc == 0, result.err
    local = tmp_path / "debug" / JOB
    assert len([p for p in (local / "debug-output").rglob("*") if p.is_file()]) == len(files)
    png = local / "loss.png"
    assert png.read_bytes().startswith(b"\x89PNG")
    assert "valid:loss = 1.5" in result.out


def test_analyze_without_a_debugger_hook_says_so(run_driver, tmp_path: Path):
    result = run_driver(train, ["--region", REGION, "--attach", JOB, "--analyze",
                                "--analyze-dir", str(tmp_path)],
                        {"DescribeTrainingJob": completed_job(None)})
    assert result.rc == 1 and "without a Debugger hook" in result.err


@pytest.mark.slow
def test_plot_debug_reads_train_and_eval_losses(real_run: RealRun, tmp_path: Path):
    import json
    import subprocess

    assert_hook_worked(real_run)
    out, points = tmp_path / "loss.png", tmp_path / "loss.json"
    script = train.PLOT_DEBUG_SCRIPT
    proc = subprocess.run([real_run.python, str(script), str(real_run.debug_output),
                           "--out", str(out), "--json", str(points)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    losses = json.loads(points.read_text())
    [(_name, modes)] = losses.items()
    assert modes["train"] and modes["eval"], losses  # both modes, one point per step
    train_steps = [step for step, _ in modes["train"]]
    assert train_steps == sorted(train_steps) and len(set(train_steps)) == len(train_steps)
    assert out.read_bytes().startswith(b"\x89PNG")
