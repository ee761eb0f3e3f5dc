"""Settings: documented order, and missing values fail before any AWS call."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from scripts import deploy, predict, settings, train, tune
from scripts.settings import SettingsError, resolve
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
    (d, m) for d in sorted(DRIVERS) for m in ("region", "role", "bucket", "image")
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


def test_predict_on_an_endpoint_needs_a_region(run_driver, tmp_path: Path):
    image = tmp_path / "x.jpg"
    image.write_bytes(b"\xff\xd8\xff\xe0" + b"0" * 16)
    rc = predict.main(["--endpoint", "ep", "--dry-run", str(image)])
    assert rc == 2


def ns(**kwargs) -> argparse.Namespace:
    base = {"region": None, "role": None, "bucket": None, "prefix": None, "image_uri": None,
            "instance_type": None}
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
