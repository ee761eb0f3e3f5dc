#!/usr/bin/env python3
"""Classify a whole S3 prefix with a batch transform job on the serving image.

    python scripts/transform.py --training-job resnet-train-261127-2015 \\
        --input s3://BUCKET/photos/ --output s3://BUCKET/predictions/
    python scripts/transform.py --from-best best_training_job.json \\
        --input s3://BUCKET/photos.jsonl --content-type application/jsonlines --wait

Input: one image per S3 object (an image content type, SplitType None: one answer file per
photo), or JSON Lines ({"image": "<base64>"} a line, SplitType Line: one output line per input
line, AssembleWith Line). Sends CreateModel and CreateTransformJob; BatchStrategy,
MaxPayloadInMB and MaxConcurrentTransforms are left to the container's /execution-parameters
unless given. Each result lands at OUTPUT/<input key>.out. The model and job carry the tag
``sagemaker-resnet50:created-by``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from drivers import common as driver
from drivers.aws_settings import SettingsError, add_common_arguments, resolve, s3_uri_type
from drivers.model_source import add_model_arguments, model_data_url
from job_contract.deployment import BATCH_STRICT_ENV
from job_contract.media import JSONLINES, JSONLINES_TYPES

JOB_PREFIX = "resnet-transform"
OWNER_TAG = {"Key": "sagemaker-resnet50:created-by", "Value": "scripts/transform.py"}
IMAGE_CONTENT_TYPE = "application/x-image"  # any image: the server sniffs the format
SPLIT_TYPES = ("None", "Line")
BATCH_STRATEGIES = ("SingleRecord", "MultiRecord")
# CreateTransformJob's limits: MaxPayloadInMB <= 100, and concurrency x payload <= 100.
PAYLOAD_LIMIT_MB = 100
POLL_S = 30
DONE = ("Completed", "Failed", "Stopped")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="transform.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p, image="serve")
    add_model_arguments(p.add_argument_group("model (one of)").add_mutually_exclusive_group())
    d = p.add_argument_group("data")
    d.add_argument("--input", type=s3_uri_type, metavar="S3_URI",
                   help="the S3 prefix (or object) to classify")
    d.add_argument("--output", type=s3_uri_type, metavar="S3_URI",
                   help="where the results go (default s3://BUCKET/PREFIX/transform/NAME)")
    d.add_argument("--content-type", default=IMAGE_CONTENT_TYPE,
                   help=f"of the input objects (default {IMAGE_CONTENT_TYPE}: one image an "
                        f"object; {JSONLINES} for JSON Lines)")
    d.add_argument("--split-type", choices=SPLIT_TYPES,
                   help="default Line for JSON Lines, None for images")
    d.add_argument("--strict", action="store_true",
                   help=f"JSON Lines: a bad record fails the job instead of giving an error "
                        f"line (sets {BATCH_STRICT_ENV}=true)")
    j = p.add_argument_group("job")
    j.add_argument("--name", help=f"job and model name (default {JOB_PREFIX}-TIME)")
    j.add_argument("--instance-count", type=int, default=1)
    j.add_argument("--batch-strategy", choices=BATCH_STRATEGIES,
                   help="default: what the container's /execution-parameters says")
    j.add_argument("--max-payload-mb", type=int, metavar="MB",
                   help="default: what the container's /execution-parameters says")
    j.add_argument("--max-concurrent", type=int, metavar="N",
                   help="requests in flight per instance (default: the container's value)")
    j.add_argument("--env", action="append", metavar="NAME=VALUE",
                   help="environment of the serving container for this job; repeatable")
    j.add_argument("--wait", action="store_true", help="wait until the job ends")
    j.add_argument("--timeout", type=int, default=6 * 3600, help="seconds to wait (--wait)")
    return p


def is_jsonlines(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() in JSONLINES_TYPES


def split_type(args: argparse.Namespace) -> str:
    return args.split_type or ("Line" if is_jsonlines(args.content_type) else "None")


def check_args(args: argparse.Namespace) -> None:
    """Every mistake found before any request."""
    if not (args.model_data or args.training_job or args.from_best):
        raise SettingsError("missing model: set --model-data S3_URI, --training-job NAME or "
                            "--from-best FILE")
    if not args.input:
        raise SettingsError("missing input: set --input s3://BUCKET/PREFIX")
    if split_type(args) == "Line" and not is_jsonlines(args.content_type):
        raise SettingsError(f"--split-type Line cuts the input at newlines: it needs JSON Lines "
                            f"(--content-type {JSONLINES}), not {args.content_type}")
    if args.strict and not is_jsonlines(args.content_type):
        raise SettingsError("--strict applies to JSON Lines input")
    if args.instance_count < 1:
        raise SettingsError("--instance-count must be at least 1")
    if args.max_payload_mb is not None and not 1 <= args.max_payload_mb <= PAYLOAD_LIMIT_MB:
        raise SettingsError(f"--max-payload-mb must be 1-{PAYLOAD_LIMIT_MB}")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise SettingsError("--max-concurrent must be at least 1")
    if (args.max_payload_mb or 0) * (args.max_concurrent or 0) > PAYLOAD_LIMIT_MB:
        raise SettingsError(f"--max-concurrent x --max-payload-mb must be at most "
                            f"{PAYLOAD_LIMIT_MB} (SageMaker's limit)")
    environment(args)


def environment(args: argparse.Namespace) -> dict[str, str]:
    """--env pairs, plus the strict switch of --strict."""
    env = driver.parse_key_values(args.env, "--env")
    if args.strict:
        env[BATCH_STRICT_ENV] = "true"
    return env


def model_request(name: str, image: str, data_url: str, role: str) -> dict[str, Any]:
    return {"ModelName": name, "ExecutionRoleArn": role,
            "PrimaryContainer": {"Image": image, "ModelDataUrl": data_url},
            "Tags": [dict(OWNER_TAG)]}


def transform_request(args: argparse.Namespace, name: str, output: str,
                      instance_type: str) -> dict[str, Any]:
    """CreateTransformJob: what is not given is left out, for the container to say."""
    jsonlines = is_jsonlines(args.content_type)
    request: dict[str, Any] = {
        "TransformJobName": name, "ModelName": name,
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": args.input}},
            "ContentType": args.content_type, "SplitType": split_type(args),
            "CompressionType": "None"},
        "TransformOutput": {"S3OutputPath": output,
                            "Accept": JSONLINES if jsonlines else "application/json",
                            "AssembleWith": "Line" if jsonlines else "None"},
        "TransformResources": {"InstanceType": instance_type,
                               "InstanceCount": args.instance_count},
        "Tags": [dict(OWNER_TAG)],
    }
    optional = {"BatchStrategy": args.batch_strategy, "MaxPayloadInMB": args.max_payload_mb,
                "MaxConcurrentTransforms": args.max_concurrent, "Environment": environment(args)}
    request.update({key: value for key, value in optional.items() if value})
    return request


def wait_done(ctx: driver.DriverContext, name: str, timeout: int) -> dict[str, Any]:
    """DescribeTransformJob until the job ends; DriverError unless it completed."""
    sm = ctx.client("sagemaker")
    deadline = time.monotonic() + timeout
    while True:
        job = sm.describe_transform_job(TransformJobName=name)
        status = job["TransformJobStatus"]
        if status in DONE:
            break
        if time.monotonic() > deadline:
            raise driver.DriverError(f"transform job {name} is still {status} after "
                                     f"{timeout}s; it keeps running")
        time.sleep(POLL_S)
    if status != "Completed":
        raise driver.DriverError(
            f"transform job {name} {status}: {job.get('FailureReason', 'no reason given')} "
            f"(see the CloudWatch log group /aws/sagemaker/TransformJobs, streams {name}/...)")
    return job


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        check_args(args)
        settings = resolve(args, ["region", "role", "serve_image"], image="serve")
        ctx = driver.open_context(settings, args.dry_run)
        driver.complete_settings(ctx, ["role"] if args.output else ["role", "bucket"])
        s = ctx.settings
        name = args.name or driver.default_job_name(JOB_PREFIX)
        output = args.output or s.s3("transform", name)
        sm = ctx.client("sagemaker")
        assert s.serve_image and s.role
        sm.create_model(**model_request(name, s.serve_image, model_data_url(ctx, args), s.role))
        sm.create_transform_job(**transform_request(args, name, output, s.serve_instance_type))
        ctx.did("create", f"model and transform job {name} (tagged {OWNER_TAG['Key']})")
        if ctx.dry_run:
            driver.finish(ctx)
            return 0
        print(f"transform job: {name}")
        print(f"output:        {output.rstrip('/')}/<input key>.out")
        if args.wait:
            wait_done(ctx, name, args.timeout)
            print(f"completed:     {name}")
        return 0

    return driver.run(body)


if __name__ == "__main__":
    sys.exit(main())
