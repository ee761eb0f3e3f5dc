#!/usr/bin/env python3
"""One SageMaker training job on the training image, with TensorBoard output and, on request,
SageMaker Debugger.

    python scripts/train.py --data s3://BUCKET/photos --set epochs=10 --wait
    python scripts/train.py --data s3://BUCKET/photos --from-best best_training_job.json --wait
        # the best trial's values, with the compiled serving variant trials skip
    python scripts/train.py --data s3://BUCKET/photos --debugger --wait   # accounts with Debugger
    python scripts/train.py --attach resnet-train-261127-2015 --analyze   # plot its losses

By default the request holds what every account can use: TensorBoard files written by the job
to /opt/ml/output/tensorboard are uploaded, and the job's own report.html, findings and step
timings land in its output (docs/debugging.md). ``--debugger`` adds SageMaker Debugger (closed
to accounts opened after 2026-07-30): a hook config that saves the losses every step and
weights and gradients every ``--tensor-interval`` steps, the built-in rules LossNotDecreasing,
Overfit and VanishingGradient, and the profiler (system metrics plus the ProfilerReport rule).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from drivers import common as driver
from drivers.aws_settings import (
    REPO_ROOT,
    SettingsError,
    add_common_arguments,
    check_imagenet_weights,
    resolve,
)
from drivers.common import WAIT_SLACK_S
from drivers.search_space import parse_static, request_values, served_values
from job_contract.hyperparameters import SPECS_BY_NAME
from job_contract.metrics import METRIC_DEFINITIONS
from job_contract.sagemaker_paths import (
    CHECKPOINT_LOCAL_PATH,
    DEBUG_HOOK_CONFIG,
    INPUT_CONFIG,
    TENSORBOARD_LOCAL_PATH,
    in_job,
)

# A plain script (smdebug, no SDK), run with an interpreter that has smdebug.
PLOT_DEBUG_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "plot_debug.py"

# Built-in rule -> smdebug_rulesconfig factory name
DEBUGGER_RULES = {
    "LossNotDecreasing": "loss_not_decreasing",
    "Overfit": "overfit",
    "VanishingGradient": "vanishing_gradient",
}
PROFILER_RULES = {"ProfilerReport": "ProfilerReport"}
# The request fields --debugger adds; a refusal that names one of them (or Debugger/Profiler)
# is the account being closed to Debugger.
DEBUGGER_FIELDS = ("DebugHookConfig", "DebugRuleConfigurations", "ProfilerConfig",
                   "ProfilerRuleConfigurations")
DEBUGGER_REFUSAL_CODES = {"ValidationException", "AccessDeniedException", "AccessDenied"}
SMDEBUG_PYTHON_ENV = "SMDEBUG_PYTHON"
JOB_PREFIX = "resnet-train"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p, image="train")
    driver.add_data_arguments(p)
    h = p.add_argument_group("hyperparameters")
    h.add_argument("--from-best", type=Path, metavar="FILE",
                   help="start from the hyperparameters of tune.py's best job file, with the "
                        "serving variants its trials skipped (compile) back on")
    h.add_argument("--set", action="append", metavar="NAME=VALUE", dest="static",
                   help="a hyperparameter (overrides --from-best); repeatable")
    j = p.add_argument_group("job")
    j.add_argument("--job-name", help=f"training job name (default {JOB_PREFIX}-TIME)")
    j.add_argument("--instance-count", type=int, default=1)
    j.add_argument("--volume-size", type=int, default=50, help="GB per instance")
    j.add_argument("--max-run", type=int, default=4 * 3600, help="seconds")
    j.add_argument("--spot", action=argparse.BooleanOptionalAction, default=False,
                   help="managed spot training with checkpoints (default off)")
    j.add_argument("--max-wait", type=int, default=8 * 3600, help="seconds, with --spot")
    j.add_argument("--checkpoint-s3", metavar="S3_URI",
                   help="checkpoint location (default s3://BUCKET/PREFIX/checkpoints/JOB)")
    driver.add_network_arguments(j)
    d = p.add_argument_group("SageMaker Debugger and profiler (accounts that have them)")
    d.add_argument("--debugger", action=argparse.BooleanOptionalAction, default=False,
                   help="add the Debugger hook, built-in rules and profiler to the request "
                        "(default off: Debugger is closed to accounts opened after 2026-07-30)")
    d.add_argument("--tensor-interval", type=int, default=100,
                   help="save weights and gradients every N steps (losses: every step)")
    d.add_argument("--profiler-interval-ms", type=int, default=500,
                   choices=[100, 200, 500, 1000, 5000, 60000],
                   help="system metrics sampling interval")
    f = p.add_argument_group("following and analysis")
    f.add_argument("--attach", metavar="TRAINING_JOB", help="use an existing job, create none")
    f.add_argument("--wait", action="store_true", help="stream the job's logs until it ends")
    f.add_argument("--timeout", type=int, metavar="SECONDS",
                   help="stop waiting after this long (the job keeps running; default: its "
                        f"MaxWait or MaxRuntime plus {WAIT_SLACK_S} s)")
    f.add_argument("--analyze", action="store_true",
                   help="after the job: download the debug output and plot train vs eval loss")
    f.add_argument("--analyze-dir", type=Path, default=Path("debug"),
                   help="where the debug output and plot go (default ./debug/JOB)")
    return p


def initial_weights(hps: dict[str, Any]) -> str:
    """The weights hyperparameter the job will run with (the image's default if unset)."""
    return str(hps.get("weights", SPECS_BY_NAME["weights"].default))


def hyperparameters(args: argparse.Namespace) -> dict[str, str]:
    """--from-best values (with the serving variants its trial skipped turned back on: this
    job trains the model you serve), then --set; each checked by the image's own parser."""
    values: dict[str, Any] = {}
    if args.from_best:
        best = parse_static(driver.load_best(args.from_best).get("hyperparameters", {}))
        values.update(served_values(best))
    values.update(parse_static(driver.parse_key_values(args.static, "--set")))
    return request_values(dict(sorted(values.items())))


def rule_image(region: str) -> str:
    from sagemaker.core.debugger.debugger import get_rule_container_image_uri

    return get_rule_container_image_uri(None, region)


def debugger_configs(ctx: driver.DriverContext, name: str, tensor_interval: int,
                     profiler_interval_ms: int) -> dict[str, Any]:
    """Hook, rules, profiler config and profiler rules, as SDK v3 shapes.

    The SDK's v2-era helpers (``Rule.sagemaker`` and smdebug_rulesconfig) still give the rule
    parameters, but v3 has no estimator to fill in the region's rule image
    ("DEFAULT_RULE_EVALUATOR_IMAGE") or to merge the rules' collections into the hook: done here.
    """
    import smdebug_rulesconfig as rule_configs
    from sagemaker.core import shapes
    from sagemaker.core.debugger.debugger import ProfilerRule, Rule
    from sagemaker.core.utils.utils import transform

    image = rule_image(ctx.region)
    every = str(tensor_interval)
    collections: dict[str, dict[str, str]] = {
        "losses": {"save_interval": "1"},
        "weights": {"save_interval": every},
        "gradients": {"save_interval": every},
    }
    rules = []
    for factory in DEBUGGER_RULES.values():
        rule = Rule.sagemaker(getattr(rule_configs, factory)())
        for collection in rule.collection_configs or []:
            collections.setdefault(collection.name, dict(collection.parameters or {}))
        request = rule.to_debugger_rule_config_dict()
        request["RuleEvaluatorImage"] = image
        rules.append(shapes.DebugRuleConfiguration(
            **transform(request, "DebugRuleConfiguration")))
    output = ctx.settings.s3("training")  # SageMaker adds JOB/debug-output, JOB/profiler-output
    hook = {
        "S3OutputPath": output,
        "CollectionConfigurations": [
            {"CollectionName": c, "CollectionParameters": params}
            for c, params in collections.items()
        ],
    }
    profiler_rules = []
    for rule_name, factory in PROFILER_RULES.items():
        request = ProfilerRule.sagemaker(getattr(rule_configs, factory)()) \
            .to_profiler_rule_config_dict()
        request["RuleEvaluatorImage"] = image
        request["RuleConfigurationName"] = rule_name
        profiler_rules.append(shapes.ProfilerRuleConfiguration(
            **transform(request, "ProfilerRuleConfiguration")))
    profiler = {"S3OutputPath": output, "ProfilingIntervalInMilliseconds": profiler_interval_ms}
    return {
        "debug_hook_config": shapes.DebugHookConfig(**transform(hook, "DebugHookConfig")),
        "debug_rule_configurations": rules,
        "profiler_config": shapes.ProfilerConfig(**transform(profiler, "ProfilerConfig")),
        "profiler_rule_configurations": profiler_rules,
    }


def channels_to_shapes(inputs: str | dict[str, str]) -> list[Any]:
    from sagemaker.core import shapes

    if isinstance(inputs, str):
        inputs = {"training": inputs}
    return [
        shapes.Channel(
            channel_name=name,
            data_source=shapes.DataSource(s3_data_source=shapes.S3DataSource(
                s3_data_type="S3Prefix", s3_uri=uri,
                s3_data_distribution_type="FullyReplicated")),
            input_mode="File",
        )
        for name, uri in inputs.items()
    ]


def start_training_job(ctx: driver.DriverContext, args: argparse.Namespace,
                       hps: dict[str, str], inputs: str | dict[str, str]) -> str:
    """TrainingJob.create (ModelTrainer has no Debugger or profiler arguments in v3)."""
    from sagemaker.core import shapes
    from sagemaker.core.resources import TrainingJob

    s = ctx.settings
    name = args.job_name or driver.default_job_name(JOB_PREFIX)
    stopping = shapes.StoppingCondition(max_runtime_in_seconds=args.max_run)
    extra: dict[str, Any] = {}
    if args.spot:
        driver.check_spot_wait(args)
        stopping.max_wait_time_in_seconds = args.max_wait
        extra["enable_managed_spot_training"] = True
    if args.spot or args.checkpoint_s3:
        extra["checkpoint_config"] = shapes.CheckpointConfig(
            s3_uri=driver.checkpoint_uri(args, s, name), local_path=CHECKPOINT_LOCAL_PATH)
    if args.network_isolation:
        extra["enable_network_isolation"] = True
    if args.debugger:
        extra.update(debugger_configs(ctx, name, args.tensor_interval,
                                      args.profiler_interval_ms))
    TrainingJob.create(
        training_job_name=name,
        role_arn=s.role,
        algorithm_specification=shapes.AlgorithmSpecification(
            training_image=s.train_image,
            training_input_mode="File",
            metric_definitions=[shapes.MetricDefinition(name=d["Name"], regex=d["Regex"])
                                for d in METRIC_DEFINITIONS],
            enable_sage_maker_metrics_time_series=True,
        ),
        hyper_parameters=hps,
        input_data_config=channels_to_shapes(inputs),
        output_data_config=shapes.OutputDataConfig(s3_output_path=s.s3("training")),
        resource_config=shapes.ResourceConfig(
            instance_type=s.train_instance_type, instance_count=args.instance_count,
            volume_size_in_gb=args.volume_size),
        stopping_condition=stopping,
        tensor_board_output_config=shapes.TensorBoardOutputConfig(
            local_path=TENSORBOARD_LOCAL_PATH,
            s3_output_path=s.s3("training", name, "tensorboard")),
        session=ctx.boto_session,
        region=ctx.region,
        **extra,
    )
    return name


def default_timeout(described: dict[str, Any]) -> int:
    """How long to wait by default: what SageMaker itself lets the job run, plus slack."""
    stop = described.get("StoppingCondition") or {}
    limit = stop.get("MaxWaitTimeInSeconds") or stop.get("MaxRuntimeInSeconds") or 24 * 3600
    return int(limit) + WAIT_SLACK_S


def wait_for_job(ctx: driver.DriverContext, name: str, timeout: int | None) -> dict[str, Any]:
    """Stream the logs with the SDK's wait; without access to them, boto3's waiter."""
    from sagemaker.core.resources import TrainingJob
    from sagemaker.core.utils.exceptions import FailedStatusError, TimeoutExceededError

    sm = ctx.client("sagemaker")
    timeout = timeout or default_timeout(sm.describe_training_job(TrainingJobName=name))
    job = TrainingJob.get(training_job_name=name, session=ctx.boto_session, region=ctx.region)
    try:
        job.wait(poll=30, timeout=timeout, logs=True)
    except FailedStatusError:
        pass  # the describe below gives the reason
    except TimeoutExceededError:
        raise still_running(name, timeout) from None
    except Exception as exc:  # e.g. no access to the CloudWatch logs: wait without them
        ctx.log(f"cannot stream the logs ({exc}); waiting for the job's status")
        wait_with_waiter(sm, name, timeout)
    return sm.describe_training_job(TrainingJobName=name)


def still_running(name: str, timeout: int) -> driver.DriverError:
    return driver.DriverError(f"training job {name} has not ended after {timeout} s of waiting; "
                              "it keeps running: python scripts/train.py --attach "
                              f"{name} --wait")


def wait_with_waiter(sm: Any, name: str, timeout: int, delay: int = 30) -> None:
    """boto3's training_job_completed_or_stopped waiter; a failed job returns (report says
    why), running past ``timeout`` raises."""
    from botocore.exceptions import WaiterError

    try:
        sm.get_waiter("training_job_completed_or_stopped").wait(
            TrainingJobName=name,
            WaiterConfig={"Delay": delay, "MaxAttempts": max(1, -(-timeout // delay))})
    except WaiterError as exc:
        last = exc.last_response or {}
        if last.get("TrainingJobStatus") == "Failed":
            return
        if "Error" in last:
            raise driver.DriverError(driver.aws_said(last["Error"])) from None
        raise still_running(name, timeout) from None


def debugger_refusal(exc: Exception) -> str | None:
    """The one line to print when SageMaker refused the request because the account cannot
    use Debugger (closed to accounts opened after 2026-07-30), else None."""
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return None
    err = exc.response.get("Error", {})
    message = " ".join(str(err.get("Message", "")).split())
    if err.get("Code") not in DEBUGGER_REFUSAL_CODES:
        return None
    words = ("debugger", "profiler", *(f.lower() for f in DEBUGGER_FIELDS))
    if not any(word in message.lower() for word in words):
        return None
    return (f"SageMaker refused the Debugger part of the request ({err.get('Code')}: "
            f"{message}); SageMaker Debugger is closed to accounts opened after 2026-07-30: "
            "run again without --debugger (report.html, findings and TensorBoard need nothing "
            "from it)")


def report(ctx: driver.DriverContext, job: dict[str, Any]) -> None:
    lines = [f"training job {job['TrainingJobName']}: {job['TrainingJobStatus']}"]
    if job.get("FailureReason"):
        lines.append(f"  reason: {job['FailureReason']}")
    for m in job.get("FinalMetricDataList", []):
        lines.append(f"  {m['MetricName']} = {m['Value']:.4g}")
    for status in job.get("DebugRuleEvaluationStatuses", []) + \
            job.get("ProfilerRuleEvaluationStatuses", []):
        lines.append(f"  rule {status['RuleConfigurationName']}: "
                     f"{status.get('RuleEvaluationStatus')} {status.get('StatusDetails', '')}")
    if job.get("ModelArtifacts", {}).get("S3ModelArtifacts"):
        lines.append(f"  model data: {job['ModelArtifacts']['S3ModelArtifacts']}")
    print("\n".join(lines))


# -- --analyze ------------------------------------------------------------------------------

def split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key


def download_debug_output(ctx: driver.DriverContext, job: dict[str, Any], dest: Path) -> Path:
    """Copy s3://.../JOB/debug-output to dest (the layout smdebug's create_trial reads)."""
    hook = job.get("DebugHookConfig")
    if not hook:
        raise driver.DriverError(f"{job['TrainingJobName']} ran without a Debugger hook "
                                 "(train.py without --debugger): there is no Debugger output "
                                 "to analyze; its own report.html is in the job's output")
    bucket, prefix = split_s3(hook["S3OutputPath"].rstrip("/"))
    prefix = f"{prefix}/{job['TrainingJobName']}/debug-output/".lstrip("/")
    s3 = ctx.client("s3")
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            target = dest / obj["Key"][len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, obj["Key"], str(target))
            count += 1
    if not count:
        raise driver.DriverError(f"no debug output under s3://{bucket}/{prefix}: did the "
                                 "training code create the smdebug hook from "
                                 f"{in_job(INPUT_CONFIG)}/{DEBUG_HOOK_CONFIG}?")
    ctx.log(f"downloaded {count} files to {dest}")
    return dest


def smdebug_python() -> str | None:
    """An interpreter with smdebug: this one, $SMDEBUG_PYTHON, or the repo's .venv."""
    try:
        import smdebug  # noqa: F401

        return sys.executable
    except ImportError:
        pass
    for candidate in (os.environ.get(SMDEBUG_PYTHON_ENV), str(REPO_ROOT / ".venv/bin/python")):
        if candidate and shutil.which(candidate):
            probe = subprocess.run([candidate, "-c", "import smdebug, matplotlib"],
                                   capture_output=True)
            if probe.returncode == 0:
                return candidate
    return None


def analyze(ctx: driver.DriverContext, job: dict[str, Any], root: Path) -> Path:
    dest = root / job["TrainingJobName"]
    download_debug_output(ctx, job, dest / "debug-output")
    python = smdebug_python()
    if python is None:
        raise driver.DriverError(
            "smdebug is needed to read the debug output and cannot live in the SDK v3 venv "
            "(protobuf pins clash). Install it in another venv: pip install smdebug==1.0.34 "
            "protobuf==3.20.3 'numpy<2' 'pandas<3' requests matplotlib, then set "
            f"{SMDEBUG_PYTHON_ENV}=/that/venv/bin/python and rerun with --attach "
            f"{job['TrainingJobName']} --analyze (the files are already in {dest})")
    png = dest / "loss.png"
    cmd = [python, str(PLOT_DEBUG_SCRIPT), str(dest / "debug-output"),
           "--out", str(png)]
    proc = subprocess.run(cmd)
    if proc.returncode:
        raise driver.DriverError(f"plotting failed ({' '.join(cmd)})")
    return png


def create_job(ctx: driver.DriverContext, args: argparse.Namespace, hps: dict[str, str],
               inputs: str | dict[str, str]) -> str:
    """Resolve the bucket and role, then send CreateTrainingJob; a Debugger refusal is said
    in one line."""
    from botocore.exceptions import ClientError

    driver.complete_settings(ctx, ["bucket", "role"])
    try:
        name = start_training_job(ctx, args, hps, inputs)
    except ClientError as exc:
        refusal = debugger_refusal(exc) if args.debugger else None
        if refusal:
            raise driver.DriverError(refusal) from None
        raise
    ctx.did("create", f"training job {name}")
    return name


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        required = ["region"] if args.attach else ["region", "role", "bucket", "train_image"]
        settings = resolve(args, required, image="train")
        if not args.attach:
            if args.analyze and not args.debugger:
                raise SettingsError("--analyze plots the Debugger output: add --debugger "
                                    "(or read report.html in the job's output)")
            hps = hyperparameters(args)
            inputs = driver.data_channels(args)
            check_imagenet_weights([initial_weights(hps)], settings,
                                   args.image_has_imagenet_weights)
        ctx = driver.open_context(settings, args.dry_run)
        name = args.attach or create_job(ctx, args, hps, inputs)
        if ctx.dry_run:
            driver.finish(ctx)
            return 0
        if args.wait or args.analyze:
            job = wait_for_job(ctx, name, args.timeout)
            report(ctx, job)
            if job["TrainingJobStatus"] != "Completed":
                return driver.EXIT_FAILED
            if args.analyze:
                ctx.log(f"plot: {analyze(ctx, job, args.analyze_dir)}")
        else:
            ctx.log(f"follow it with: python scripts/train.py --attach {name} --wait")
        return 0

    return driver.run(body)


if __name__ == "__main__":
    sys.exit(main())
