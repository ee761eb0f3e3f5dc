#!/usr/bin/env python3
"""Deploy a trained model on the serving image: model, endpoint config, endpoint; or tear down.

    python scripts/deploy.py --training-job resnet-train-261127-2015
    python scripts/deploy.py --model-data s3://BUCKET/.../model.tar.gz --serverless 4096:5
    python scripts/deploy.py --from-best best_training_job.json --autoscale 1:4
    python scripts/deploy.py --training-job NAME --async-output s3://BUCKET/out --async-scaling 0:4
    python scripts/deploy.py --multi-model s3://BUCKET/models/ --instance-type ml.m5.xlarge
    python scripts/deploy.py --delete resnet-serve-261127-2040 --yes

Waits until the endpoint is InService (or reports why it failed), then prints its name and a
ready-to-run ``aws sagemaker-runtime invoke-endpoint`` command. The model, endpoint config and
endpoint carry the tag ``sagemaker-resnet50:created-by``; ``--delete`` removes only what carries
it, after ``--yes`` or a yes on the terminal.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from dataclasses import dataclass
from typing import Any

from drivers import common as driver
from drivers.aws_settings import (
    SettingsError,
    add_common_arguments,
    resolve,
    s3_uri_type,
)
from drivers.model_source import add_model_arguments, model_data_url
from job_contract.deployment import ASYNC_ENV, MANIFEST_PIN_ENV, MULTI_MODEL_ENV, MULTI_MODEL_MODE

ENDPOINT_PREFIX = "resnet-serve"
VARIANT = "AllTraffic"
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
SERVERLESS_MEMORY = (1024, 2048, 3072, 4096, 5120, 6144)
# Accelerated families. GPU (CUDA): the serving image runs the model on the GPU by itself
# (SERVE_DEVICE=auto, docs/serving-api.md "GPU serving"). Neuron (Inferentia, Trainium): the
# image has no Neuron runtime, so the model runs on the CPUs and these pay for an idle chip.
ACCELERATED_FAMILY = re.compile(r"^ml\.(g\d|p\d|inf\d|trn\d)")
GPU_FAMILY = re.compile(r"^ml\.(g\d|p\d)")
CAPTURE_JSON_TYPES = ["application/json"]
# Set on everything deploy.py creates; --delete touches nothing without it.
OWNER_TAG = {"Key": "sagemaker-resnet50:created-by", "Value": "scripts/deploy.py"}
# The serving container checks the artifact's manifest.json against this sha256 (docs/artifact.md).
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# Asynchronous inference autoscaling, as AWS documents it (docs/drivers.md cites the pages):
# target tracking on the backlog per instance, and a step policy fired by an alarm on
# HasBacklogWithoutCapacity, since target tracking alone never leaves zero instances.
BACKLOG_METRIC = "ApproximateBacklogSizePerInstance"
NO_CAPACITY_METRIC = "HasBacklogWithoutCapacity"
NO_CAPACITY_ALARM_SUFFIX = "backlog-without-capacity"
SNS_ARN_RE = re.compile(r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[\w-]+$")


def _pair(text: str, what: str) -> tuple[int, int]:
    try:
        a, b = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} takes A:B (two integers), got {text!r}") from None
    return a, b


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="deploy.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p, image="serve")
    m = p.add_argument_group("model (one of)")
    src = m.add_mutually_exclusive_group()
    add_model_arguments(src)
    src.add_argument("--delete", metavar="ENDPOINT",
                     help="delete the endpoint, its config, its models and its autoscaling")
    m.add_argument("--env", action="append", metavar="NAME=VALUE",
                   help="environment of the serving container (e.g. SAGEMAKER_MODEL_SERVER_"
                        "WORKERS=2); repeatable")
    m.add_argument("--manifest-sha256", type=sha256_type, metavar="HEX",
                   help=f"pin the artifact: sets {MANIFEST_PIN_ENV}, the serving container "
                        "refuses a model.tar.gz whose manifest.json has another sha256 (the "
                        "training job logs manifest_sha256=HEX)")
    m.add_argument("--yes", action="store_true",
                   help="with --delete: delete without asking (needed when not on a terminal)")
    e = p.add_argument_group("endpoint")
    e.add_argument("--name", help="endpoint, config and model name "
                                  f"(default {ENDPOINT_PREFIX}-TIME)")
    e.add_argument("--instance-count", type=int, default=1)
    e.add_argument("--serverless", metavar="MEMORY_MB:MAX_CONCURRENCY",
                   type=lambda t: _pair(t, "--serverless"),
                   help="a serverless endpoint instead of instances, e.g. 4096:5")
    e.add_argument("--data-capture", type=s3_uri_type, metavar="S3_URI",
                   help="capture requests and responses to this S3 prefix")
    e.add_argument("--capture-percent", type=int, default=100)
    e.add_argument("--autoscale", metavar="MIN:MAX", type=lambda t: _pair(t, "--autoscale"),
                   help="target-tracking autoscaling of the instance count")
    e.add_argument("--target-invocations", type=float, default=100.0,
                   help="invocations per instance per minute to track (default 100)")
    e.add_argument("--no-wait", dest="wait", action="store_false",
                   help="return once the endpoint is being created")
    e.add_argument("--timeout", type=int, default=1800, help="seconds to wait for InService")
    add_async_arguments(p)
    add_multi_model_arguments(p)
    return p


def add_async_arguments(p: argparse.ArgumentParser) -> None:
    a = p.add_argument_group("asynchronous inference (an instance endpoint that queues requests)")
    a.add_argument("--async-output", type=s3_uri_type, metavar="S3_URI",
                   help="make the endpoint asynchronous: results are written under this prefix "
                        f"(the serving container gets {ASYNC_ENV}=true: 1 GB bodies, 1 h)")
    a.add_argument("--async-failure", type=s3_uri_type, metavar="S3_URI",
                   help="where failed requests' messages go (default OUTPUT/failures)")
    a.add_argument("--async-success-topic", type=sns_arn_type, metavar="SNS_ARN",
                   help="SNS topic told of each result")
    a.add_argument("--async-error-topic", type=sns_arn_type, metavar="SNS_ARN",
                   help="SNS topic told of each failure")
    a.add_argument("--async-max-concurrency", type=int, metavar="N",
                   help="requests one instance works on at once (1-1000; default: SageMaker's)")
    a.add_argument("--async-scaling", metavar="MIN:MAX",
                   type=lambda t: _pair(t, "--async-scaling"),
                   help="autoscaling on the queue (backlog per instance); MIN 0 scales to zero "
                        "and back out when a request arrives, e.g. 0:4")
    a.add_argument("--target-backlog", type=float, metavar="N",
                   help=f"queued requests per instance to track (default "
                        f"{DEFAULT_TARGET_BACKLOG:g})")


def sha256_type(text: str) -> str:
    value = text.strip().lower()
    if not SHA256_RE.match(value):
        raise argparse.ArgumentTypeError(f"--manifest-sha256 takes 64 hex digits, got {text!r}")
    return value


def sns_arn_type(text: str) -> str:
    if not SNS_ARN_RE.match(text):
        raise argparse.ArgumentTypeError(f"takes an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:"
                                         f"NAME), got {text!r}")
    return text


# Flags that mean something only with --async-output.
ASYNC_ONLY = ("async_failure", "async_success_topic", "async_error_topic",
              "async_max_concurrency", "async_scaling", "target_backlog")
DEFAULT_TARGET_BACKLOG = 5.0


def check_async_args(args: argparse.Namespace) -> None:
    """The asynchronous flags fit together and with the endpoint (before any call)."""
    given = [f"--{n.replace('_', '-')}" for n in ASYNC_ONLY if getattr(args, n) is not None]
    if not args.async_output:
        if given:
            raise SettingsError(f"{given[0]} applies to an asynchronous endpoint: add "
                                "--async-output S3_URI")
        return
    if args.serverless:
        raise SettingsError("--async-output needs instances: a --serverless endpoint cannot "
                            "be asynchronous")
    if args.autoscale:
        raise SettingsError("--autoscale tracks a real-time endpoint's invocations; an "
                            "asynchronous one scales on its queue: use --async-scaling MIN:MAX")
    if args.async_max_concurrency is not None and not 1 <= args.async_max_concurrency <= 1000:
        raise SettingsError("--async-max-concurrency must be 1-1000")
    if args.async_scaling:
        low, high = args.async_scaling
        if not 0 <= low <= high or high < 1:
            raise SettingsError("--async-scaling MIN:MAX needs 0 <= MIN <= MAX and MAX >= 1")
        if args.instance_count > high:
            raise SettingsError(f"--instance-count {args.instance_count} is above "
                                f"--async-scaling MAX {high}")
    elif args.target_backlog is not None:
        raise SettingsError("--target-backlog applies to --async-scaling MIN:MAX")
    if args.target_backlog is not None and args.target_backlog <= 0:
        raise SettingsError("--target-backlog must be above 0")
def add_multi_model_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("multi-model endpoint (instead of one model)")
    g.add_argument("--multi-model", type=s3_uri_type, metavar="S3_PREFIX",
                   help="serve every model.tar.gz under this prefix from one endpoint "
                        "(Mode MultiModel); invoke one with predict.py --target-model KEY")


def check_multi_model(args: argparse.Namespace) -> None:
    """--multi-model takes an S3 prefix instead of one model, on instances only."""
    if not args.multi_model:
        return
    if args.model_data or args.training_job or args.from_best or args.delete:
        raise SettingsError("--multi-model S3_PREFIX replaces --model-data, --training-job and "
                            "--from-best (and is not for --delete): give one")
    if not args.multi_model.endswith("/"):
        raise SettingsError(f"--multi-model takes an S3 prefix ending in '/', got "
                            f"{args.multi_model!r}; the models are the .tar.gz files under it")
    if args.serverless:
        raise SettingsError("--multi-model needs instances: serverless endpoints do not host "
                            "multi-model containers")
    if args.manifest_sha256:
        raise SettingsError("--manifest-sha256 pins one artifact; a multi-model endpoint "
                            "serves many: leave it out")
    if args.async_output:
        raise SettingsError("--multi-model with --async-output: InvokeEndpointAsync has no "
                            "TargetModel, so an asynchronous endpoint serves one model")


def multi_model_container(args: argparse.Namespace) -> dict[str, Any]:
    """The container definition's fields for --multi-model (none without it)."""
    if not args.multi_model:
        return {}
    return {"mode": MULTI_MODEL_MODE,
            "environment": {**container_environment(args), MULTI_MODEL_ENV: "true"}}


def check_args(args: argparse.Namespace) -> None:
    check_multi_model(args)
    if not (args.delete or args.model_data or args.training_job or args.from_best
            or args.multi_model):
        raise SettingsError("missing model: set --model-data S3_URI, --training-job NAME or "
                            "--from-best FILE (or --delete ENDPOINT)")
    if args.serverless:
        memory, concurrency = args.serverless
        if memory not in SERVERLESS_MEMORY:
            raise SettingsError(f"--serverless memory must be one of {SERVERLESS_MEMORY} MB")
        if not 1 <= concurrency <= 200:
            raise SettingsError("--serverless max concurrency must be 1-200")
        if args.autoscale:
            raise SettingsError("--autoscale applies to instance endpoints, not --serverless")
    if args.autoscale:
        low, high = args.autoscale
        if not 1 <= low <= high:
            raise SettingsError("--autoscale MIN:MAX needs 1 <= MIN <= MAX")
    if not 0 < args.capture_percent <= 100:
        raise SettingsError("--capture-percent must be 1-100")
    if args.instance_count < 1:
        raise SettingsError("--instance-count must be at least 1")
    check_async_args(args)
    container_environment(args)  # --env / --manifest-sha256 conflicts, before any call
    if args.delete and not (args.yes or args.dry_run or sys.stdin.isatty()):
        raise SettingsError(f"--delete {args.delete} deletes an endpoint: add --yes (nothing "
                            "asks for confirmation when not on a terminal; --dry-run shows "
                            "what would be deleted)")


def container_environment(args: argparse.Namespace) -> dict[str, str]:
    """--env pairs, plus the manifest pin of --manifest-sha256."""
    env = driver.parse_key_values(args.env, "--env")
    if args.manifest_sha256:
        given = env.get(MANIFEST_PIN_ENV, args.manifest_sha256).lower()
        if given != args.manifest_sha256:
            raise SettingsError(f"--manifest-sha256 and --env {MANIFEST_PIN_ENV}=... "
                                "disagree: give one")
        env[MANIFEST_PIN_ENV] = args.manifest_sha256
    if args.async_output:
        env.update(async_environment(env))
    return env


def async_environment(env: dict[str, str]) -> dict[str, str]:
    """What an asynchronous endpoint's container needs: its larger body and time-out limits
    (docs/serving-api.md); an --env that says otherwise is refused rather than overridden."""
    given = env.get(ASYNC_ENV, "true").strip().lower()
    if given not in ("true", "1"):
        raise SettingsError(f"--async-output sets {ASYNC_ENV}=true and --env {ASYNC_ENV}="
                            f"{env[ASYNC_ENV]} disagrees: drop that --env")
    return {ASYNC_ENV: "true"}


def failure_path(output: str) -> str:
    return output.rstrip("/") + "/failures"


def async_inference_config(args: argparse.Namespace) -> dict[str, Any]:
    """CreateEndpointConfig's AsyncInferenceConfig: result and failure prefixes, SNS topics,
    requests per instance."""
    output: dict[str, Any] = {"S3OutputPath": args.async_output,
                              "S3FailurePath": args.async_failure
                              or failure_path(args.async_output)}
    topics = {key: arn for key, arn in (("SuccessTopic", args.async_success_topic),
                                        ("ErrorTopic", args.async_error_topic)) if arn}
    if topics:
        output["NotificationConfig"] = topics
    config: dict[str, Any] = {"OutputConfig": output}
    if args.async_max_concurrency is not None:
        config["ClientConfig"] = {
            "MaxConcurrentInvocationsPerInstance": args.async_max_concurrency}
    return config


def instance_note(instance_type: str) -> str | None:
    """A line for an accelerated instance type: what serving does with its chip."""
    if not ACCELERATED_FAMILY.match(instance_type):
        return None
    if GPU_FAMILY.match(instance_type):
        return (f"note: {instance_type} has a GPU: the serving image runs the model on it "
                "(SERVE_DEVICE=auto: fp16 where the GPU has it, batches of up to 8 concurrent "
                "requests per forward pass; docs/serving-api.md, GPU serving).")
    return (f"note: {instance_type} has an accelerator, but the serving image runs the model "
            "on its CPUs (the fastest CPU path: compiled fp32 or int8); the accelerator stays "
            "idle. A CPU instance type (ml.m5.xlarge, the default, or ml.c6i.xlarge) costs less.")


def model_url(ctx: driver.DriverContext, args: argparse.Namespace) -> str:
    """--multi-model's S3 prefix, else the one model's S3 URI (drivers.model_source)."""
    return args.multi_model or model_data_url(ctx, args)


def endpoint_config_request(args: argparse.Namespace, name: str, s: Any) -> dict[str, Any]:
    """The CreateEndpointConfig request: one variant (instances or serverless), data capture."""
    if args.serverless:
        memory, concurrency = args.serverless
        variant: dict[str, Any] = {
            "VariantName": VARIANT, "ModelName": name,
            "ServerlessConfig": {"MemorySizeInMB": memory, "MaxConcurrency": concurrency}}
    else:
        variant = {"VariantName": VARIANT, "ModelName": name,
                   "InitialInstanceCount": args.instance_count,
                   "InstanceType": s.serve_instance_type, "InitialVariantWeight": 1.0}
    request: dict[str, Any] = {"EndpointConfigName": name, "ProductionVariants": [variant]}
    if args.data_capture:
        request["DataCaptureConfig"] = {
            "EnableCapture": True,
            "InitialSamplingPercentage": args.capture_percent,
            "DestinationS3Uri": args.data_capture,
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": {"JsonContentTypes": CAPTURE_JSON_TYPES},
        }
    if args.async_output:
        request["AsyncInferenceConfig"] = async_inference_config(args)
    return request


def create_all(ctx: driver.DriverContext, args: argparse.Namespace, name: str,
               data_url: str) -> Any:
    from sagemaker.core import shapes
    from sagemaker.core.resources import Endpoint, Model

    s = ctx.settings
    common = {"session": ctx.boto_session, "region": ctx.region}
    tags = [shapes.Tag(key=OWNER_TAG["Key"], value=OWNER_TAG["Value"])]
    Model.create(
        model_name=name,
        primary_container=shapes.ContainerDefinition(**{
            "image": s.serve_image, "model_data_url": data_url,
            "environment": container_environment(args), **multi_model_container(args)}),
        execution_role_arn=s.role,
        tags=tags,
        **common,
    )
    # CreateEndpointConfig goes through boto3: SDK v3 3.27 serializes the serverless
    # memory_size_in_mb as "MemorySizeInMb" (the API wants "MemorySizeInMB"), which boto3
    # rejects, so EndpointConfig.create cannot make a serverless endpoint.
    ctx.client("sagemaker").create_endpoint_config(**endpoint_config_request(args, name, s),
                                                   Tags=[dict(OWNER_TAG)])
    return Endpoint.create(endpoint_name=name, endpoint_config_name=name, tags=tags, **common)


def wait_in_service(ctx: driver.DriverContext, endpoint: Any, timeout: int) -> None:
    from sagemaker.core.utils.exceptions import FailedStatusError, TimeoutExceededError

    try:
        endpoint.wait_for_status("InService", poll=15, timeout=timeout)
    except FailedStatusError:
        described = ctx.client("sagemaker").describe_endpoint(EndpointName=endpoint.endpoint_name)
        raise driver.DriverError(
            f"endpoint {endpoint.endpoint_name} is {described.get('EndpointStatus')}: "
            f"{described.get('FailureReason', 'no reason given')} (see the CloudWatch log group "
            f"/aws/sagemaker/Endpoints/{endpoint.endpoint_name}); tear down with "
            f"python scripts/deploy.py --delete {endpoint.endpoint_name} --yes") from None
    except TimeoutExceededError:
        raise driver.DriverError(f"endpoint {endpoint.endpoint_name} not InService after "
                                 f"{timeout}s; it keeps being created") from None


def resource_id(endpoint: str) -> str:
    return f"endpoint/{endpoint}/variant/{VARIANT}"


def autoscale(ctx: driver.DriverContext, endpoint: str, low: int, high: int, target: float) -> None:
    """Target tracking on invocations per instance (Application Auto Scaling; not in the SDK)."""
    aas = ctx.client("application-autoscaling")
    aas.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=resource_id(endpoint),
                                 ScalableDimension=SCALABLE_DIMENSION,
                                 MinCapacity=low, MaxCapacity=high)
    aas.put_scaling_policy(
        PolicyName=f"{endpoint}-invocations",
        ServiceNamespace="sagemaker",
        ResourceId=resource_id(endpoint),
        ScalableDimension=SCALABLE_DIMENSION,
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": target,
            "PredefinedMetricSpecification": {
                "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
            "ScaleInCooldown": 300,
            "ScaleOutCooldown": 60,
        },
    )


def no_capacity_alarm(endpoint: str) -> str:
    return f"{endpoint}-{NO_CAPACITY_ALARM_SUFFIX}"


def async_autoscale(ctx: driver.DriverContext, endpoint: str, low: int, high: int,
                    target: float) -> None:
    """Target tracking on the queue per instance; with MIN 0 also the step policy and alarm
    that start an instance when requests wait and none runs (AWS's async scale-to-zero)."""
    aas = ctx.client("application-autoscaling")
    scalable = {"ServiceNamespace": "sagemaker", "ResourceId": resource_id(endpoint),
                "ScalableDimension": SCALABLE_DIMENSION}
    aas.register_scalable_target(**scalable, MinCapacity=low, MaxCapacity=high)
    dimensions = [{"Name": "EndpointName", "Value": endpoint}]
    aas.put_scaling_policy(
        PolicyName=f"{endpoint}-backlog", PolicyType="TargetTrackingScaling", **scalable,
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": target,
            "CustomizedMetricSpecification": {
                "MetricName": BACKLOG_METRIC, "Namespace": "AWS/SageMaker",
                "Dimensions": dimensions, "Statistic": "Average"},
            "ScaleInCooldown": 600,
            "ScaleOutCooldown": 300,
        })
    if low > 0:
        return
    step = aas.put_scaling_policy(
        PolicyName=f"{endpoint}-out-of-zero", PolicyType="StepScaling", **scalable,
        StepScalingPolicyConfiguration={
            "AdjustmentType": "ChangeInCapacity", "MetricAggregationType": "Average",
            "Cooldown": 300,
            "StepAdjustments": [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}]})
    ctx.client("cloudwatch").put_metric_alarm(
        AlarmName=no_capacity_alarm(endpoint),
        AlarmDescription=f"requests wait for {endpoint} and no instance runs: start one",
        Namespace="AWS/SageMaker", MetricName=NO_CAPACITY_METRIC, Dimensions=dimensions,
        Statistic="Average", Period=60, EvaluationPeriods=2, DatapointsToAlarm=2,
        Threshold=1, ComparisonOperator="GreaterThanOrEqualToThreshold",
        TreatMissingData="missing", AlarmActions=[step["PolicyARN"]], Tags=[dict(OWNER_TAG)])


def async_scaling_line(low: int, high: int, target: float) -> str:
    line = f"autoscaling {low}-{high} instances at {target:g} queued requests/instance"
    return line + (f", out of zero on {NO_CAPACITY_METRIC}" if low == 0 else "")


def print_async_usage(region: str, endpoint: str) -> int:
    print(f"endpoint: {endpoint} (asynchronous)")
    print(f"try it:   python scripts/predict.py --region {shlex.quote(region)} --async "
          f"--endpoint {shlex.quote(endpoint)} photo.jpg")
    return 0


@dataclass
class Teardown:
    """What --delete removes (only resources tagged OWNER_TAG) and what it keeps."""

    endpoint: str
    config: str | None = None
    models: tuple[str, ...] = ()
    targets: tuple[dict[str, Any], ...] = ()
    kept: tuple[str, ...] = ()
    alarms: tuple[str, ...] = ()  # --async-scaling MIN 0's alarm (named after the endpoint)

    def describe(self) -> str:
        parts = [f"endpoint {self.endpoint}"]
        parts += [f"endpoint config {self.config}"] if self.config else []
        parts += [f"model {m}" for m in self.models]
        parts += [f"autoscaling of {t['ResourceId']}" for t in self.targets]
        parts += [f"alarm {a}" for a in self.alarms]
        return ", ".join(parts)


def created_here(ctx: driver.DriverContext, arn: str) -> bool:
    """Whether the resource carries OWNER_TAG (a dry run reads no tags: assumed, and said)."""
    if ctx.dry_run:
        return True
    pages = ctx.client("sagemaker").get_paginator("list_tags").paginate(ResourceArn=arn)
    return any(t.get("Key") == OWNER_TAG["Key"] for page in pages for t in page.get("Tags", []))


def plan_teardown(ctx: driver.DriverContext, name: str) -> Teardown:
    """Read the endpoint, its config, models and autoscaling; refuse an endpoint deploy.py did
    not create, keep a config or model it did not create."""
    sm = ctx.client("sagemaker")
    endpoint = sm.describe_endpoint(EndpointName=name)
    if not created_here(ctx, endpoint["EndpointArn"]):
        raise driver.DriverError(
            f"refusing to delete endpoint {name}: deploy.py did not create it (no tag "
            f"{OWNER_TAG['Key']}); delete it the way it was made (console, aws sagemaker "
            "delete-endpoint)")
    config_name = endpoint.get("EndpointConfigName") or name  # (a dry run knows no config)
    config = sm.describe_endpoint_config(EndpointConfigName=config_name)
    # a dry run reads placeholder variants: deploy.py names model and config alike
    names = sorted({v["ModelName"] for v in config.get("ProductionVariants", [])}) or \
        ([config_name] if ctx.dry_run else [])
    kept = []
    ours_config = created_here(ctx, config["EndpointConfigArn"])
    if not ours_config:
        kept.append(f"endpoint config {config_name}")
    models = []
    for model in names:
        if created_here(ctx, sm.describe_model(ModelName=model)["ModelArn"]):
            models.append(model)
        else:
            kept.append(f"model {model}")
    pages = ctx.client("application-autoscaling").get_paginator(
        "describe_scalable_targets").paginate(ServiceNamespace="sagemaker",
                                              ResourceIds=[resource_id(name)])
    targets = tuple(t for page in pages for t in page.get("ScalableTargets", []))
    return Teardown(name, config_name if ours_config else None, tuple(models), targets,
                    tuple(kept), backlog_alarms(ctx, name, config))


def backlog_alarms(ctx: driver.DriverContext, endpoint: str,
                   config: dict[str, Any]) -> tuple[str, ...]:
    """The alarm async_autoscale made, if any: deregistering the target deletes its policies,
    not the CloudWatch alarm that fired one."""
    if "AsyncInferenceConfig" not in config:
        return ()
    found = ctx.client("cloudwatch").describe_alarms(AlarmNames=[no_capacity_alarm(endpoint)])
    return tuple(a["AlarmName"] for a in found.get("MetricAlarms", []))


def confirm(plan: Teardown) -> None:
    """Ask on the terminal (check_args made sure there is one when --yes is missing)."""
    answer = input(f"delete {plan.describe()}? [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise driver.DriverError("nothing deleted (answer y to delete, or pass --yes)")


def delete_all(ctx: driver.DriverContext, name: str, yes: bool) -> None:
    """Autoscaling target, endpoint, endpoint config, models; each reported as it goes."""
    from botocore.exceptions import ClientError

    plan = plan_teardown(ctx, name)
    if ctx.dry_run:
        ctx.log(f"would check that each carries the tag {OWNER_TAG['Key']} (an untagged "
                "endpoint is refused, an untagged config or model kept)")
    elif not yes:
        confirm(plan)
    for kept in plan.kept:
        ctx.log(f"{kept} kept: deploy.py did not create it (no tag {OWNER_TAG['Key']})")
    sm = ctx.client("sagemaker")
    aas = ctx.client("application-autoscaling")
    for target in plan.targets:
        aas.deregister_scalable_target(ServiceNamespace="sagemaker",
                                       ResourceId=target["ResourceId"],
                                       ScalableDimension=target["ScalableDimension"])
        ctx.did("deregister", f"autoscaling of {target['ResourceId']}")
    if plan.alarms:
        ctx.client("cloudwatch").delete_alarms(AlarmNames=list(plan.alarms))
        ctx.did("delete", f"alarm {', '.join(plan.alarms)}")
    sm.delete_endpoint(EndpointName=name)
    ctx.did("delete", f"endpoint {name}")
    if plan.config:
        sm.delete_endpoint_config(EndpointConfigName=plan.config)
        ctx.did("delete", f"endpoint config {plan.config}")
    for model in plan.models:
        try:
            sm.delete_model(ModelName=model)
            ctx.did("delete", f"model {model}")
        except ClientError as exc:  # shared with another endpoint, or already gone
            ctx.log(f"model {model} kept: {exc.response['Error'].get('Message')}")


def invoke_command(region: str, endpoint: str) -> str:
    return " ".join([
        "aws sagemaker-runtime invoke-endpoint",
        f"--region {shlex.quote(region)}",
        f"--endpoint-name {shlex.quote(endpoint)}",
        "--content-type image/jpeg",
        "--custom-attributes top_k=5",
        "--body fileb://photo.jpg",
        "/dev/stdout",
    ])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        check_args(args)
        required = ["region"] if args.delete else ["region", "role", "serve_image"]
        settings = resolve(args, required, image="serve")
        ctx = driver.open_context(settings, args.dry_run)
        if args.delete:
            delete_all(ctx, args.delete, args.yes)
            driver.finish(ctx)
            return 0
        name = args.name or driver.default_job_name(ENDPOINT_PREFIX)
        note = None if args.serverless else instance_note(settings.serve_instance_type)
        if note:
            ctx.log(note)
        driver.complete_settings(ctx, ["role"])
        endpoint = create_all(ctx, args, name, model_url(ctx, args))
        ctx.did("create", f"model, endpoint config and endpoint {name} (tagged "
                f"{OWNER_TAG['Key']})")
        if args.wait and not ctx.dry_run:
            wait_in_service(ctx, endpoint, args.timeout)
        if args.autoscale:
            autoscale(ctx, name, *args.autoscale, args.target_invocations)
            ctx.did("register", f"autoscaling {args.autoscale[0]}-{args.autoscale[1]} "
                    f"instances at {args.target_invocations:g} invocations/instance/minute")
        if args.async_scaling:
            target = args.target_backlog or DEFAULT_TARGET_BACKLOG
            async_autoscale(ctx, name, *args.async_scaling, target)
            ctx.did("register", async_scaling_line(*args.async_scaling, target))
        if ctx.dry_run:
            driver.finish(ctx)
            return 0
        if args.async_output:
            return print_async_usage(ctx.region, name)
        print(f"endpoint: {name}")
        print(f"try it:   {invoke_command(ctx.region, name)}")
        print(f"or:       python scripts/predict.py --endpoint {name} photo.jpg")
        if args.multi_model:
            print(f"models:   add --target-model KEY (KEY: a .tar.gz under {args.multi_model})")
        return 0

    return driver.run(body)


if __name__ == "__main__":
    sys.exit(main())
