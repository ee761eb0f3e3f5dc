"""Common settings of the drivers: where each value comes from, and the error when one is missing.

Order, first found wins (documented in docs/drivers.md):

1. command-line flags (``--profile``, ``--region``, ``--role``, ``--bucket``, ``--prefix``,
   ``--image-uri``, ``--instance-type``);
2. environment variables (``SETTINGS_ENV`` below; the region also from ``AWS_REGION`` and
   ``AWS_DEFAULT_REGION``, the profile from ``AWS_PROFILE``);
3. for image URIs: the build output file ``image_uris.json`` (``{"train": URI, "serve": URI}``)
   that ``./build_and_push.sh`` writes at the repository root, or the file named by
   ``IMAGE_URIS_FILE``;
4. for the region: the AWS profile configuration (``~/.aws/config``, ``AWS_PROFILE``), read
   locally by boto3 without any call;
5. defaults, only for values that have a safe one (prefix, instance types);
6. the bucket and role only, resolved by ``drivers.common.complete_settings`` with AWS calls
   once a session is open: the SDK's default bucket (``sagemaker-REGION-ACCOUNT``) and, on a
   SageMaker Studio/notebook, its execution role (:data:`DEFERRED`).

Everything else is resolved and checked before any AWS call: a missing or malformed value raises
:class:`SettingsError` whose message names every flag and variable that would set it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent

IMAGE_URIS_FILE_ENV = "IMAGE_URIS_FILE"
DEFAULT_IMAGE_URIS_FILE = REPO_ROOT / "image_uris.json"

# setting -> environment variables, first set wins
SETTINGS_ENV: dict[str, tuple[str, ...]] = {
    "profile": ("AWS_PROFILE",),
    "region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
    "role": ("SAGEMAKER_ROLE_ARN",),
    "bucket": ("SAGEMAKER_BUCKET",),
    "prefix": ("SAGEMAKER_PREFIX",),
    "train_image": ("TRAIN_IMAGE_URI",),
    "serve_image": ("SERVE_IMAGE_URI",),
    "train_instance_type": ("SAGEMAKER_TRAIN_INSTANCE_TYPE",),
    "serve_instance_type": ("SAGEMAKER_SERVE_INSTANCE_TYPE",),
}
DEFAULTS: dict[str, str] = {
    "prefix": "resnet-byoc",
    "train_instance_type": "ml.g4dn.xlarge",
    "serve_instance_type": "ml.m5.xlarge",
}
IMAGE_KEYS = {"train_image": "train", "serve_image": "serve"}
# Settings that may stay unset here: the driver resolves them with AWS calls (see above).
DEFERRED = frozenset({"bucket", "role"})
# image_uris.json: does the training image hold torchvision's ImageNet weights (build_and_push.sh)
IMAGENET_WEIGHTS_KEY = "imagenet_weights"

ROLE_RE = re.compile(r"^arn:aws[a-z\-]*:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+$")
REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
# <registry>/<repository>[:tag|@digest]; ECR or any registry SageMaker can pull from
IMAGE_RE = re.compile(r"^[^\s/]+\.[^\s/]+/[a-z0-9][a-z0-9._\-/]*(:[\w.\-]+|@sha256:[0-9a-f]{64})?$")
INSTANCE_RE = re.compile(r"^ml\.[a-z0-9\-]+\.[a-z0-9]+$")
S3_URI_RE = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$")


class SettingsError(Exception):
    """A required setting is missing or malformed; the message says how to set it."""


@dataclass(frozen=True)
class Settings:
    profile: str | None = None
    region: str | None = None
    role: str | None = None
    bucket: str | None = None
    prefix: str = DEFAULTS["prefix"]
    train_image: str | None = None
    serve_image: str | None = None
    train_instance_type: str = DEFAULTS["train_instance_type"]
    serve_instance_type: str = DEFAULTS["serve_instance_type"]
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    def s3(self, *parts: str) -> str:
        """``s3://bucket/prefix/part/...`` (the bucket must be set)."""
        assert self.bucket, "bucket was not required by resolve()"
        keys = [p.strip("/") for p in (self.prefix, *parts) if p and p.strip("/")]
        return "s3://" + "/".join([self.bucket, *keys])


HOW_TO_SET: dict[str, str] = {
    "region": "--region, AWS_REGION or AWS_DEFAULT_REGION, or a region in your AWS profile",
    "role": "--role or SAGEMAKER_ROLE_ARN (an IAM role SageMaker can assume, "
            "arn:aws:iam::ACCOUNT:role/NAME; found by itself only on a SageMaker "
            "Studio/notebook)",
    "bucket": "--bucket or SAGEMAKER_BUCKET (an S3 bucket name, without s3://)",
    "train_image": "--image-uri, TRAIN_IMAGE_URI, or run ./build_and_push.sh (writes "
                   "image_uris.json; another file: IMAGE_URIS_FILE)",
    "serve_image": "--image-uri, SERVE_IMAGE_URI, or run ./build_and_push.sh (writes "
                   "image_uris.json; another file: IMAGE_URIS_FILE)",
}


def add_common_arguments(parser: argparse.ArgumentParser, image: str | None) -> None:
    """The flags every driver shares. ``image`` is 'train', 'serve' or None (no image)."""
    group = parser.add_argument_group("AWS settings (flags > environment > image_uris.json)")
    add_account_arguments(group)
    group.add_argument("--role", help="SageMaker execution role ARN (env SAGEMAKER_ROLE_ARN; "
                       "default on a SageMaker Studio/notebook: its execution role)")
    group.add_argument("--bucket", help="S3 bucket for outputs and checkpoints (env "
                       "SAGEMAKER_BUCKET; default: the SDK's default bucket "
                       "sagemaker-REGION-ACCOUNT, created if missing)")
    group.add_argument("--prefix", help=f"S3 key prefix (env SAGEMAKER_PREFIX; default "
                       f"{DEFAULTS['prefix']})")
    if image:
        group.add_argument("--image-uri", help=f"the {image} image (env {image.upper()}_IMAGE_URI; "
                           f"else the '{image}' entry of image_uris.json)")
        group.add_argument("--instance-type", help=f"instance type (env SAGEMAKER_"
                           f"{image.upper()}_INSTANCE_TYPE; default "
                           f"{DEFAULTS[image + '_instance_type']})")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the exact API requests as JSON on stdout and call nothing")


def add_account_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--profile and --region: what every driver that calls AWS takes (predict.py: only these)."""
    parser.add_argument("--profile", help="AWS profile for credentials and region (env "
                        "AWS_PROFILE; ~/.aws/config)")
    parser.add_argument("--region", help="AWS region (env AWS_REGION / AWS_DEFAULT_REGION; "
                        "else the profile's region)")


def _first_env(env: Mapping[str, str], names: Iterable[str]) -> tuple[str | None, str]:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value, f"env {name}"
    return None, ""


def read_image_uris_file(env: Mapping[str, str]) -> tuple[dict[str, Any], str]:
    """The build output file as written, or {} when it does not exist. A broken file is an
    error."""
    path = Path(env.get(IMAGE_URIS_FILE_ENV) or DEFAULT_IMAGE_URIS_FILE)
    if not path.is_file():
        if env.get(IMAGE_URIS_FILE_ENV):
            raise SettingsError(f"{IMAGE_URIS_FILE_ENV}={path} does not exist")
        return {}, str(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SettingsError(f"cannot read image URIs from {path}: {exc}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"{path} must hold a JSON object like "
                            '{"train": "<uri>", "serve": "<uri>"}')
    return data, str(path)


def load_image_uris(env: Mapping[str, str]) -> tuple[dict[str, str], str]:
    """The image URIs of the build output file (``train``, ``serve``), or {}."""
    data, path = read_image_uris_file(env)
    return {k: v for k, v in data.items() if isinstance(v, str) and v.strip()}, path


def imagenet_weights_of(train_image: str | None, env: Mapping[str, str]) -> bool | None:
    """Whether the build recorded ImageNet weights in ``train_image``: the ``imagenet_weights``
    key of image_uris.json when the file names this image; None when unknown (no file, another
    image, or a file written before the key existed)."""
    data, _ = read_image_uris_file(env)
    if not train_image or data.get(IMAGE_KEYS["train_image"]) != train_image:
        return None
    value = data.get(IMAGENET_WEIGHTS_KEY)
    return value if isinstance(value, bool) else None


def _profile_region(profile: str | None) -> str | None:
    """The region of the AWS profile (reads ~/.aws/config; no network)."""
    try:
        import boto3

        return boto3.session.Session(profile_name=profile).region_name
    except Exception:  # a missing profile is reported by _check_profile
        return None


def _check_profile(profile: str, source: str) -> str | None:
    """A problem when the named profile is in neither ~/.aws/config nor ~/.aws/credentials."""
    import boto3
    from botocore.exceptions import ProfileNotFound

    try:
        boto3.session.Session(profile_name=profile)
    except ProfileNotFound:
        return (f"AWS profile {profile!r} (from {source}) is not in your AWS config or "
                "credentials files: fix --profile or AWS_PROFILE (aws configure list-profiles)")
    return None


def notebook_role_available() -> bool:
    """On a SageMaker Studio app or notebook instance, which describes itself in the SDK's
    NOTEBOOK_METADATA_FILE: only there does get_execution_role find the role the notebook runs
    as (elsewhere it returns the caller's own identity, e.g. an SSO role SageMaker cannot
    assume)."""
    from sagemaker.core.helper import session_helper

    return Path(session_helper.NOTEBOOK_METADATA_FILE).is_file()


def _validate(name: str, value: str) -> str | None:
    checks = {
        "region": (REGION_RE, "an AWS region such as eu-west-1"),
        "role": (ROLE_RE, "an IAM role ARN, arn:aws:iam::123456789012:role/NAME"),
        "bucket": (BUCKET_RE, "a bucket name without s3:// or slashes"),
        "train_image": (IMAGE_RE, "an image URI, ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPO:TAG"),
        "serve_image": (IMAGE_RE, "an image URI, ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPO:TAG"),
        "train_instance_type": (INSTANCE_RE, "an instance type such as ml.g4dn.xlarge"),
        "serve_instance_type": (INSTANCE_RE, "an instance type such as ml.m5.xlarge"),
    }
    if name in checks and not checks[name][0].match(value):
        return f"{name} {value!r} is not {checks[name][1]}"
    return None


def resolve(
    args: argparse.Namespace,
    required: Iterable[str],
    env: Mapping[str, str] | None = None,
    image: str | None = None,
) -> Settings:
    """Settings from flags, environment, image_uris.json, profile, defaults; check ``required``.

    ``image`` ('train' or 'serve') says which setting ``--image-uri`` and ``--instance-type``
    fill. Raises SettingsError naming every missing or malformed value at once.
    """
    env = os.environ if env is None else env
    flags: dict[str, str | None] = {
        "profile": getattr(args, "profile", None),
        "region": getattr(args, "region", None),
        "role": getattr(args, "role", None),
        "bucket": getattr(args, "bucket", None),
        "prefix": getattr(args, "prefix", None),
    }
    if image:
        flags[f"{image}_image"] = getattr(args, "image_uri", None)
        flags[f"{image}_instance_type"] = getattr(args, "instance_type", None)

    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    image_uris: dict[str, str] | None = None
    image_uris_path = ""
    for name, env_names in SETTINGS_ENV.items():
        value, source = (flags.get(name) or "").strip() or None, "flag"
        if value is None:
            value, source = _first_env(env, env_names)
        if value is None and name in IMAGE_KEYS:
            if image_uris is None:
                image_uris, image_uris_path = load_image_uris(env)
            value = image_uris.get(IMAGE_KEYS[name])
            source = image_uris_path
        if value is None and name == "region":
            value, source = _profile_region(values.get("profile")), "AWS profile"
        if value is None and name in DEFAULTS:
            value, source = DEFAULTS[name], "default"
        if value is not None:
            values[name], sources[name] = value, source

    required = list(required)
    problems = [f"missing {name}: set {HOW_TO_SET[name]}"
                for name in required if name not in values and not _deferred(name)]
    if "profile" in values:
        problems += filter(None, [_check_profile(values["profile"], sources["profile"])])
    checked = set(required) | ({f"{image}_instance_type"} if image else set())
    for name, value in values.items():
        if name in checked:
            problem = _validate(name, value)
            if problem:
                problems.append(f"{problem} (from {sources[name]})")
    if problems:
        raise SettingsError("cannot start: " + "; ".join(problems))
    if "bucket" in values and values["bucket"].startswith("s3://"):
        raise SettingsError("bucket must be a name, not an s3:// URI")
    return Settings(**values, sources=sources)


def _deferred(name: str) -> bool:
    """A missing setting the driver can still find with AWS calls (see the module's order)."""
    if name == "role":
        return notebook_role_available()
    return name in DEFERRED


def check_s3_uri(value: str, what: str) -> str:
    """An ``s3://bucket/key`` URI, or SettingsError saying which flag is wrong."""
    if not S3_URI_RE.match(value or ""):
        raise SettingsError(f"{what} must be an s3://bucket/key URI, got {value!r}")
    return value


def s3_uri_type(value: str) -> str:
    """argparse type for S3 URIs (fails at parse time, before any call)."""
    try:
        return check_s3_uri(value, "the value")
    except SettingsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_image_weights_argument(parser: argparse.ArgumentParser
                               | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--image-has-imagenet-weights", action=argparse.BooleanOptionalAction, default=None,
        help="say whether the training image holds torchvision's ImageNet weights, for an "
             "image image_uris.json does not describe (default: its imagenet_weights key)")


def check_imagenet_weights(weights: Iterable[str], settings: Settings,
                           vouched: bool | None, env: Mapping[str, str] | None = None) -> None:
    """weights=imagenet needs the weights inside the training image: the job reads them from
    the image's torch cache and never downloads them (with or without network isolation).
    SettingsError, before any request, unless the build recorded them or the user says so."""
    if "imagenet" not in set(weights):
        return
    env = os.environ if env is None else env
    image = settings.train_image
    baked = vouched if vouched is not None else imagenet_weights_of(image, env)
    if baked:
        return
    if baked is False:
        why = (f"the training image {image} has none (--no-image-has-imagenet-weights)"
               if vouched is False else
               f"{IMAGENET_WEIGHTS_KEY}: false in image_uris.json: {image} was built without them")
    else:
        why = (f"nothing says whether {image} has them (it is not the image of an "
               f"image_uris.json with an {IMAGENET_WEIGHTS_KEY} key)")
    raise SettingsError(
        f"weights=imagenet needs torchvision's ImageNet weights inside the training image, but "
        f"{why}: rebuild and push with ./build_and_push.sh (BAKE_IMAGENET_WEIGHTS=1, the "
        "default, records it), pass --image-has-imagenet-weights if this image has them, or "
        "--set weights=none")
