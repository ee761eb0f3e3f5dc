"""Settings: documented order, and missing values fail before any AWS call."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from drivers import aws_settings as settings
from drivers import deploy, predict
from drivers import training_job as train
from drivers import tuning_job as tune
from drivers.aws_settings import SettingsError, resolve
from tests.contract.conftest import BUCKET, REGION, ROLE, SERVE_IMAGE, TRAIN_IMAGE

DATA = ["--data", f"s3://{BUCKET}/photos"]
FULL = {
    "region": ["--region", REGION],
    "role": ["--role", ROLE],
    "bucket": ["--bucket", BUCKET],
}
DRIVERS = {
    "tune": (tune, ["region", "role", "bucket"], DATA),
    "train": (train, ["region", "role", "bucket"], DATA),
    "deploy": (deploy, ["region", "role"], ["--model-data", f"s3://{BUCKET}/m/model.tar.gz"]),
}


def argv_without(missing: str, names: list[str], extra: list[str]) -> list[str]:
    return [a for n in names if n != missing for a in FULL[n]] + extra + ["--dry-run"]


@pytest.mark.parametrize("driver_name, missing", [
    (d, m) for d in sorted(DRIVERS) for m in ("region", "role", "image")
    if m in DRIVERS[d][1] or m == "image"])
def test_missing_setting_names_what_to_set_and_sends_nothing(
        run_driver, isolated_aws: Path, monkeypatch: pytest.MonkeyPatch, driver_name: str,
        missing: str):
    module, names, extra = DRIVERS[driver_name]
    if missing == "image":
        # no image_uris.json (here or at the repo root), no flag, no env
        monkeypatch.delenv("IMAGE_URIS_FILE")
        monkeypatch.setattr(settings, "DEFAULT_IMAGE_URIS_FILE", isolated_aws.parent / "none")
    result = run_driver(module, argv_without(missing, names, extra))
    assert result.rc == 2
    assert result.out == ""
    assert result.recorder.calls == []  # no session was even opened
    hint = {"region": "AWS_REGION", "role": "SAGEMAKER_ROLE_ARN", "bucket": "SAGEMAKER_BUCKET",
            "image": "image_uris.json"}[missing]
    assert "missing" in result.err and hint in result.err and "--" in result.err


# -- defaults found with AWS calls: the SDK's default bucket, a notebook's execution role ----

NO_BUCKET = [*FULL["region"], *FULL["role"]]
DEFAULT_BUCKET = f"sagemaker-{REGION}-123456789012"


@pytest.mark.parametrize("module", [train, tune])
def test_dry_run_without_bucket_shows_the_sdk_default_as_a_placeholder(run_driver, module):
    result = run_driver(module, [*NO_BUCKET, *DATA, "--dry-run"])
    assert result.rc == 0, result.err
    placeholder = f"sagemaker-{REGION}-<account>"
    assert f"would use the SDK's default bucket {placeholder}" in result.err
    assert f"s3://{placeholder}/resnet-byoc/" in result.out
    assert {r["service"] for r in result.requests()} == {"sagemaker"}  # no STS, no S3


def caller_identity(params: dict) -> dict:
    return {"UserId": "AIDA", "Account": "123456789012",
            "Arn": "arn:aws:iam::123456789012:user/me"}


def training_job_answers() -> dict:
    return {"CreateTrainingJob": {"TrainingJobArn": "arn:x"},
            "DescribeTrainingJob": lambda p: {
                "TrainingJobName": p["TrainingJobName"], "TrainingJobArn": "arn:x",
                "TrainingJobStatus": "InProgress", "SecondaryStatus": "Starting",
                "CreationTime": "2026-11-27T20:00:00Z",
                "ModelArtifacts": {"S3ModelArtifacts": ""},
                "AlgorithmSpecification": {"TrainingInputMode": "File"},
                "ResourceConfig": {"InstanceCount": 1, "VolumeSizeInGB": 1},
                "StoppingCondition": {"MaxRuntimeInSeconds": 1}}}


def test_without_bucket_the_sdk_default_bucket_is_used(run_driver):
    answers = {**training_job_answers(), "GetCallerIdentity": caller_identity,
               "ListBuckets": {"Buckets": [{"Name": DEFAULT_BUCKET,
                                            "CreationDate": "2026-01-01T00:00:00Z"}]},
               "HeadBucket": {}}
    result = run_driver(train, [*NO_BUCKET, *DATA, "--job-name", "train-1"], answers)
    assert result.rc == 0, result.err
    assert "GetCallerIdentity" in result.operations()
    assert "CreateBucket" not in result.operations()  # it exists: the SDK checks its owner
    assert {"Bucket": DEFAULT_BUCKET, "ExpectedBucketOwner": "123456789012"} in [
        c.params for c in result.recorder.calls if c.operation == "HeadBucket"]
    request = result.call("CreateTrainingJob")
    assert request["OutputDataConfig"]["S3OutputPath"] == \
        f"s3://{DEFAULT_BUCKET}/resnet-byoc/training"
    assert f"bucket: {DEFAULT_BUCKET}" in result.err


def test_without_bucket_a_missing_default_bucket_is_created_as_the_sdk_does(run_driver):
    answers = {**training_job_answers(), "GetCallerIdentity": caller_identity,
               "ListBuckets": {"Buckets": []},
               "HeadBucket": {"__status__": 404, "Error": {"Code": "404",
                                                           "Message": "Not Found"}},
               "CreateBucket": {"Location": f"/{DEFAULT_BUCKET}"}}
    result = run_driver(train, [*NO_BUCKET, *DATA, "--job-name", "train-1"], answers)
    assert result.rc == 0, result.err
    assert result.call("CreateBucket") == {
        "Bucket": DEFAULT_BUCKET,
        "CreateBucketConfiguration": {"LocationConstraint": REGION}}
    ops = result.operations()
    assert ops.index("CreateBucket") < ops.index("CreateTrainingJob")


def test_without_bucket_and_no_default_bucket_names_the_flag_and_variable(run_driver):
    denied = {"__status__": 403, "Error": {"Code": "AccessDenied",
                                           "Message": "not allowed: sts:GetCallerIdentity"}}
    result = run_driver(train, [*NO_BUCKET, *DATA], {"GetCallerIdentity": denied})
    assert result.rc == 2
    assert "--bucket" in result.err and "SAGEMAKER_BUCKET" in result.err
    assert "sts:GetCallerIdentity" in result.err
    assert "CreateTrainingJob" not in result.operations()


@pytest.fixture
def on_a_notebook(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    metadata = tmp_path / "resource-metadata.json"
    metadata.write_text(json.dumps({"ResourceName": "my-notebook"}))
    from sagemaker.core.helper import session_helper

    monkeypatch.setattr(session_helper, "NOTEBOOK_METADATA_FILE", str(metadata))
    return metadata


def test_on_a_notebook_dry_run_without_role_shows_a_placeholder(run_driver, on_a_notebook):
    result = run_driver(deploy, [*FULL["region"], "--model-data",
                                 f"s3://{BUCKET}/m/model.tar.gz", "--dry-run"])
    assert result.rc == 0, result.err
    assert "would use this notebook's execution role" in result.err
    assert "execution-role" in result.only("CreateModel")["ExecutionRoleArn"]


def test_on_a_notebook_its_execution_role_is_used(run_driver, on_a_notebook):
    role = "arn:aws:iam::123456789012:role/service-role/NotebookRole"
    answers = {"DescribeNotebookInstance": {"NotebookInstanceName": "my-notebook",
                                            "RoleArn": role},
               "CreateModel": {"ModelArn": "arn:x"},
               "DescribeModel": {"ModelName": "ep-1", "ModelArn": "arn:x",
                                 "CreationTime": "2026-11-27T20:00:00Z"},
               "CreateEndpointConfig": {"EndpointConfigArn": "arn:x"},
               "CreateEndpoint": {"EndpointArn": "arn:x"},
               "DescribeEndpoint": {"EndpointName": "ep-1", "EndpointArn": "arn:x",
                                    "EndpointConfigName": "ep-1", "EndpointStatus": "Creating",
                                    "CreationTime": "2026-11-27T20:00:00Z",
                                    "LastModifiedTime": "2026-11-27T20:00:00Z"}}
    result = run_driver(deploy, [*FULL["region"], "--name", "ep-1", "--no-wait",
                                 "--model-data", f"s3://{BUCKET}/m/model.tar.gz"], answers)
    assert result.rc == 0, result.err
    assert result.call("DescribeNotebookInstance") == {"NotebookInstanceName": "my-notebook"}
    assert result.call("CreateModel")["ExecutionRoleArn"] == role


@pytest.mark.parametrize("module", [train, tune, deploy, predict])
@pytest.mark.parametrize("how", ["flag", "env"])
def test_unknown_profile_is_refused_before_any_call(run_driver, monkeypatch, module, how):
    extra = {"training_job": DATA, "tuning_job": DATA, "deploy": ["--model-data", f"s3://{BUCKET}/m.tar.gz"],
             "predict": ["--endpoint", "ep", "x.jpg"]}[module.__name__.rsplit(".", 1)[-1]]
    argv = [*FULL["region"], *FULL["role"], *FULL["bucket"], *extra, "--dry-run"]
    if module is predict:
        argv = [*FULL["region"], *extra, "--dry-run"]
        (Path.cwd() / "x.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"0" * 16)
    if how == "flag":
        argv += ["--profile", "nope"]
    else:
        monkeypatch.setenv("AWS_PROFILE", "nope")
    result = run_driver(module, argv)
    assert result.rc == 2
    assert "'nope'" in result.err and "--profile" in result.err and "AWS_PROFILE" in result.err
    assert result.recorder.calls == []


@pytest.fixture
def profile_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config"
    config.write_text("[profile dev]\nregion = ap-southeast-2\n")
    credentials = tmp_path / "credentials"
    credentials.write_text("[dev]\naws_access_key_id = AKIADEVEXAMPLE\n"
                           "aws_secret_access_key = secret\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))


def test_profile_gives_region_and_credentials(profile_files, monkeypatch):
    from drivers.requests_log import ApiRecorder, make_session

    s = resolve(ns(profile="dev"), ["region"], {})
    assert (s.profile, s.region, s.sources["profile"]) == ("dev", "ap-southeast-2", "flag")
    s = resolve(ns(), ["region"], {"AWS_PROFILE": "dev"})
    assert (s.profile, s.region) == ("dev", "ap-southeast-2")
    session = make_session(s.region, ApiRecorder(), profile=s.profile)
    assert session.get_credentials().access_key == "AKIADEVEXAMPLE"


def test_predict_sends_with_the_profile(run_driver, profile_files, tmp_path):
    image = tmp_path / "x.jpg"
    image.write_bytes(b"\xff\xd8\xff\xe0" + b"0" * 16)
    rc = predict.main(["--endpoint", "ep", "--profile", "dev", "--dry-run", str(image)])
    assert rc == 0


def test_predict_on_an_endpoint_needs_a_region(run_driver, tmp_path: Path):
    image = tmp_path / "x.jpg"
    image.write_bytes(b"\xff\xd8\xff\xe0" + b"0" * 16)
    rc = predict.main(["--endpoint", "ep", "--dry-run", str(image)])
    assert rc == 2


def ns(**kwargs) -> argparse.Namespace:
    base = {"profile": None, "region": None, "role": None, "bucket": None, "prefix": None,
            "image_uri": None, "instance_type": None}
    return argparse.Namespace(**{**base, **kwargs})


def test_order_flag_then_env_then_build_file(isolated_aws: Path):
    env = {"IMAGE_URIS_FILE": str(isolated_aws)}
    s = resolve(ns(region=REGION, role=ROLE, bucket=BUCKET), ["train_image"], env, "train")
    assert s.train_image == TRAIN_IMAGE and s.sources["train_image"] == str(isolated_aws)
    assert s.serve_image == SERVE_IMAGE
    other = TRAIN_IMAGE.replace(":2026.11.27", ":env")
    s = resolve(ns(region=REGION), ["train_image"], {**env, "TRAIN_IMAGE_URI": other}, "train")
    assert s.train_image == other and s.sources["train_image"] == "env TRAIN_IMAGE_URI"
    flag = TRAIN_IMAGE.replace(":2026.11.27", ":flag")
    s = resolve(ns(region=REGION, image_uri=flag), ["train_image"],
                {**env, "TRAIN_IMAGE_URI": other}, "train")
    assert s.train_image == flag and s.sources["train_image"] == "flag"
    # --image-uri of deploy fills the serve image, not the train one
    s = resolve(ns(region=REGION, image_uri=flag), ["serve_image"], env, "serve")
    assert s.serve_image == flag and s.train_image == TRAIN_IMAGE


def test_region_env_and_defaults(isolated_aws: Path):
    s = resolve(ns(), ["region"], {"AWS_DEFAULT_REGION": "us-east-2"})
    assert s.region == "us-east-2"
    s = resolve(ns(), ["region"], {"AWS_REGION": "eu-central-1", "AWS_DEFAULT_REGION": "x"})
    assert s.region == "eu-central-1"
    s = resolve(ns(region=REGION, bucket=BUCKET), ["region", "bucket"], {}, "train")
    assert s.prefix == "resnet-byoc" and s.train_instance_type == "ml.g4dn.xlarge"
    assert s.s3("checkpoints", "job") == f"s3://{BUCKET}/resnet-byoc/checkpoints/job"


def test_region_from_the_aws_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = tmp_path / "config"
    config.write_text("[default]\nregion = ap-southeast-2\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    assert resolve(ns(), ["region"], {}).region == "ap-southeast-2"


@pytest.mark.parametrize("kwargs, message", [
    ({"role": "SageMakerRole"}, "IAM role ARN"),
    ({"bucket": "s3://bucket"}, "bucket name"),
    ({"region": "Ireland"}, "AWS region"),
    ({"image_uri": "resnet:latest"}, "image URI"),
    ({"instance_type": "g5.xlarge"}, "instance type"),
])
def test_malformed_values_are_refused(kwargs, message):
    args = ns(**{"region": REGION, "role": ROLE, "bucket": BUCKET, **kwargs})
    with pytest.raises(SettingsError, match=message):
        resolve(args, ["region", "role", "bucket", "train_image"], {}, "train")


def test_broken_build_file_is_an_error(tmp_path: Path):
    bad = tmp_path / "uris.json"
    bad.write_text("not json")
    with pytest.raises(SettingsError, match="cannot read image URIs"):
        resolve(ns(region=REGION), ["train_image"], {"IMAGE_URIS_FILE": str(bad)}, "train")
    with pytest.raises(SettingsError, match="does not exist"):
        resolve(ns(region=REGION), ["train_image"],
                {"IMAGE_URIS_FILE": str(tmp_path / "none.json")}, "train")
    bad.write_text(json.dumps(["x"]))
    with pytest.raises(SettingsError, match="JSON object"):
        resolve(ns(region=REGION), ["train_image"], {"IMAGE_URIS_FILE": str(bad)}, "train")
