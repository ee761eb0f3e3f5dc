"""Contract tests of the drivers: the exact AWS requests they send, captured at the boto3
event boundary (drivers.requests_log) with nothing ever leaving the machine.

Run in the drivers venv: ``.venv-drivers/bin/python -m pytest tests/contract``.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from drivers import common as driver
from drivers.requests_log import ApiRecorder

REQUIRED_ENV = "CONTRACT_TESTS_REQUIRED"


def contract_tests_required(env: Mapping[str, str] = os.environ) -> bool:
    """CONTRACT_TESTS_REQUIRED=1 (dev/test.sh) or CI=true: no silent skip."""
    return env.get(REQUIRED_ENV) == "1" or env.get("CI", "").lower() in ("true", "1")


try:  # the drivers' venv (.venv-drivers); elsewhere these tests are not collected
    import botocore.endpoint
    import sagemaker.train.tuner  # noqa: F401

    _real_make_request = botocore.endpoint.Endpoint.make_request
except ImportError as exc:
    if contract_tests_required():
        raise pytest.UsageError(
            f"contract tests are required ({REQUIRED_ENV}=1 or CI=true) but this interpreter "
            f"({sys.executable}) lacks the drivers' packages ({exc}): run them with "
            ".venv-drivers/bin/python -m pytest tests/contract (dev/setup_drivers_venv.sh "
            "creates it)") from None
    collect_ignore_glob = ["test_*.py"]


def pytest_configure(config: pytest.Config) -> None:
    # SDK 3.27 imports its own deprecated shim (sagemaker.train.configs): not ours to fix
    config.addinivalue_line(
        "filterwarnings", "ignore:sagemaker.train.configs has been moved:DeprecationWarning")



REGION = "eu-west-1"
ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/SageMakerExecution"
TRAIN_IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/resnet-byoc-train:2026.11.27"
SERVE_IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/resnet-byoc-serve:2026.11.27"
BUCKET = "my-ml-bucket"
AWS_SETTINGS = ["--region", REGION, "--role", ROLE, "--bucket", BUCKET]


def completed_job(model_data: str) -> dict:
    """DescribeTrainingJob's answer for the finished job train-1 whose model is ``model_data``
    (what drivers.model_source reads for --training-job)."""
    return {"TrainingJobName": "train-1", "TrainingJobArn": "arn:x",
            "TrainingJobStatus": "Completed", "SecondaryStatus": "Completed",
            "CreationTime": "2026-11-27T20:00:00Z",
            "ModelArtifacts": {"S3ModelArtifacts": model_data},
            "AlgorithmSpecification": {"TrainingInputMode": "File"},
            "ResourceConfig": {"InstanceCount": 1, "VolumeSizeInGB": 1},
            "StoppingCondition": {"MaxRuntimeInSeconds": 1}}

ENV_TO_CLEAR = ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "SAGEMAKER_ROLE_ARN",
                "SAGEMAKER_BUCKET", "SAGEMAKER_PREFIX", "TRAIN_IMAGE_URI", "SERVE_IMAGE_URI",
                "SAGEMAKER_TRAIN_INSTANCE_TYPE", "SAGEMAKER_SERVE_INSTANCE_TYPE",
                "IMAGE_URIS_FILE", "SAGEMAKER_VALIDATE_ROLE")


@pytest.fixture(autouse=True)
def isolated_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No AWS settings from the machine; image_uris.json as build_and_push.sh writes it (with
    the ImageNet weights baked in); not on a SageMaker notebook. Any request that would reach
    the network fails the test."""
    for name in ENV_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    uris = tmp_path / "image_uris.json"
    uris.write_text(json.dumps({"train": TRAIN_IMAGE, "serve": SERVE_IMAGE,
                                "imagenet_weights": True}))
    monkeypatch.setenv("IMAGE_URIS_FILE", str(uris))
    monkeypatch.chdir(tmp_path)
    from sagemaker.core.helper import session_helper

    monkeypatch.setattr(session_helper, "NOTEBOOK_METADATA_FILE",
                        str(tmp_path / "no-notebook-metadata"))

    import botocore.endpoint

    def refuse(self: Any, operation_model: Any, request_dict: Any) -> Any:
        raise AssertionError(f"a request reached the network layer: {operation_model.name}")

    monkeypatch.setattr(botocore.endpoint.Endpoint, "make_request", refuse)
    return uris



@pytest.fixture
def moto_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto answers at botocore's before-send, inside the network layer: let requests reach
    that layer (moto then answers every one of them) for this test only."""
    import botocore.endpoint
    from moto import mock_aws

    monkeypatch.setattr(botocore.endpoint.Endpoint, "make_request", _real_make_request)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield


@dataclass
class Result:
    rc: int
    out: str
    err: str
    recorder: ApiRecorder

    def requests(self) -> list[dict[str, Any]]:
        """The dry-run JSON the driver printed on stdout."""
        assert self.rc == 0, self.err
        return json.loads(self.out)

    def only(self, operation: str) -> dict[str, Any]:
        found = [r["params"] for r in self.requests() if r["operation"] == operation]
        assert len(found) == 1, f"{operation}: {len(found)} requests; err={self.err}"
        return found[0]

    def operations(self) -> list[str]:
        return [c.operation for c in self.recorder.calls]

    def call(self, operation: str) -> dict[str, Any]:
        found = [c.params for c in self.recorder.calls if c.operation == operation]
        assert len(found) == 1, f"{operation}: {len(found)} calls ({self.operations()})"
        return found[0]


@pytest.fixture
def run_driver(monkeypatch: pytest.MonkeyPatch,
               capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[..., Result]]:
    """run_driver(module, argv, responses=None) -> Result, with every call recorded.

    ``responses`` (operation -> dict or callable) answers calls the way AWS would, for the
    parts of a driver that run after a job starts (waiting, results, teardown).
    """
    created: list[ApiRecorder] = []
    original = driver.open_context

    def run(module: Any, argv: list[str], responses: dict[str, Any] | None = None) -> Result:
        recorder = ApiRecorder(responses=dict(responses or {}))
        created.append(recorder)
        monkeypatch.setattr(driver, "open_context",
                            functools.partial(original, recorder=recorder))
        capsys.readouterr()
        rc = module.main(argv)
        out, err = capsys.readouterr()
        return Result(rc, out, err, recorder)

    yield run
    for recorder in created:  # a dry run uninstalls its guard; make sure of it
        recorder.dry_run = False


# -- one real tiny training run (torch, in the training venv), shared by the tests ------------

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "sample_data" / "photos5"


@dataclass(frozen=True)
class RealRun:
    log: str  # stdout + stderr, as CloudWatch would hold it
    manifest: dict[str, Any]  # the artifact's manifest.json
    debug_output: Path  # what the smdebug hook wrote (the layout of JOB/debug-output)
    python: str  # the interpreter that has torch and smdebug


def training_python() -> str | None:
    """TRAIN_PYTHON, or the repository's .venv, if it can import torch and smdebug."""
    candidate = os.environ.get("TRAIN_PYTHON") or str(REPO / ".venv" / "bin" / "python")
    if not Path(candidate).exists():
        return None
    probe = subprocess.run([candidate, "-c", "import torch, torchvision, smdebug"],
                           capture_output=True)
    return candidate if probe.returncode == 0 else None


@pytest.fixture(scope="session")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> RealRun:
    """The training code run as a job would run it (1 epoch, 64 px, random init) with a
    Debugger hook config like the one train.py asks SageMaker for (losses every step)."""
    python = training_python()
    if python is None:
        pytest.skip("no training venv with torch and smdebug (set TRAIN_PYTHON or create .venv)")
    root = tmp_path_factory.mktemp("real-run")
    hook = root / "debughookconfig.json"
    hook.write_text(json.dumps({
        "LocalPath": str(root / "tensors"),
        "CollectionConfigurations": [{"CollectionName": "losses",
                                      "CollectionParameters": {"save_interval": "1"}}]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_"))}
    env.update(PYTHONPATH=str(REPO), SMDEBUG_CONFIG_FILE_PATH=str(hook))
    proc = subprocess.run(
        [python, "-m", "container_train", "--data-dir", str(SAMPLES),
         "--model-dir", str(root / "model"), "--output-data-dir", str(root / "out"),
         "--checkpoint-dir", str(root / "ckpt"), "--weights", "none", "--image-size", "64",
         "--epochs", "1", "--num-workers", "0", "--batch-size", "16", "--log-interval", "2"],
        capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    manifest = json.loads((root / "model" / "manifest.json").read_text())
    return RealRun(log, manifest, root / "tensors", python)
