#!/usr/bin/env python3
"""Start a SageMaker hyperparameter tuning job on the training image; follow it; keep the best.

    python scripts/tune.py --data s3://BUCKET/photos --max-jobs 12 --max-parallel-jobs 3 --wait
    python scripts/tune.py --attach resnet-hpo-261127-1944 --wait   # follow / collect a job
    python scripts/tune.py --attach resnet-hpo-261127-1944 --report hpo-report   # trials,
        # plots: hpo-report/tuning_report.html and trials.csv (drivers/tuning_report.py)
    python scripts/tune.py --local --data sample_data/photos5 --max-jobs 20 \
        --set trainable-layers=0        # the same search on this machine (drivers/local_tuning.py)

Ranges (``--range NAME=SPEC``, repeatable) override the defaults of ``drivers/search_space.py``
(the one search space, shared with ``--local``): ``LOW:HIGH`` is a continuous range for float
hyperparameters and an integer range for int ones (add ``:log`` or ``:linear``), ``A,B,C`` a
categorical one, ``off`` drops a default range. Every bound and choice
is checked against the training image's own table (``job_contract.hyperparameters``), and
the objective and metric regexes come from ``job_contract.metrics``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from drivers import common as driver
from drivers.aws_settings import (
    SettingsError,
    add_common_arguments,
    check_imagenet_weights,
    resolve,
)
from drivers.common import BEST_FILE_FORMAT, WAIT_SLACK_S
from drivers.search_space import (  # one search space for SageMaker and --local
    Range,
    add_search_arguments,
    build_ranges,
    parse_static,
    request_values,
    trial_static,
)
from job_contract.hyperparameters import (
    SPECS_BY_NAME,
    HyperparameterError,
    canonical_name,
    parse_value,
)
from job_contract.metrics import METRIC_DEFINITIONS, OBJECTIVES
from job_contract.sagemaker_paths import CHECKPOINT_LOCAL_PATH

JOB_PREFIX = "resnet-hpo"
TERMINAL = {"Completed", "Failed", "Stopped"}  # DescribeHyperParameterTuningJob's end states
VALIDATE_ROLE_ENV = "SAGEMAKER_VALIDATE_ROLE"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tune.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p, image="train")
    p.add_argument("--local", action="store_true",
                   help="tune on this machine with Optuna instead (needs torch; see "
                        "drivers/local_tuning.py --help)")
    driver.add_data_arguments(p)
    t = add_search_arguments(p)
    t.add_argument("--max-parallel-jobs", type=int, default=2)
    t.add_argument("--job-name",
                   help=f"tuning job name (max 32 chars; default {JOB_PREFIX}-TIME)")
    c = p.add_argument_group("compute")
    c.add_argument("--instance-count", type=int, default=1)
    c.add_argument("--validate-role", action="store_true",
                   help="let the SDK check the role with IAM first (needs "
                        "iam:SimulatePrincipalPolicy)")
    c.add_argument("--volume-size", type=int, default=50, help="GB per instance")
    c.add_argument("--spot", action=argparse.BooleanOptionalAction, default=True,
                   help="managed spot training with checkpoints (default on)")
    c.add_argument("--checkpoint-s3", metavar="S3_URI",
                   help="checkpoint location (default s3://BUCKET/PREFIX/checkpoints/JOB)")
    c.add_argument("--max-run", type=int, default=2 * 3600, help="seconds per trial")
    c.add_argument("--max-wait", type=int, default=4 * 3600,
                   help="seconds per trial including spot waits (>= --max-run)")
    driver.add_network_arguments(c)
    r = p.add_argument_group("following and results")
    r.add_argument("--attach", metavar="TUNING_JOB", help="follow an existing job, create none")
    r.add_argument("--wait", action="store_true", help="show a live table of the trials")
    r.add_argument("--poll", type=float, default=30.0, help="seconds between polls")
    r.add_argument("--report", type=Path, metavar="DIR",
                   help="write DIR/tuning_report.html (trials, best, Optuna's plots) and "
                        "DIR/trials.csv; with --wait once the job has ended")
    r.add_argument("--timeout", type=int, metavar="SECONDS",
                   help="stop waiting after this long (the job keeps running; default: what "
                        "its trials may take in rounds of --max-parallel-jobs, plus "
                        f"{WAIT_SLACK_S} s per round)")
    return p


def trial_weights(static: dict[str, Any], ranges: dict[str, Range]) -> list[str]:
    """Every weights value a trial may run with: fixed, tuned, or the image's default."""
    if "weights" in ranges:
        return list(ranges["weights"].values)
    return [str(static.get("weights", SPECS_BY_NAME["weights"].default))]


def start_tuning_job(ctx: driver.DriverContext, args: argparse.Namespace,
                     ranges: dict[str, Range], static: dict[str, Any],
                     inputs: str | dict[str, str]) -> str:
    """Build the tuning job with the SDK (ModelTrainer + HyperparameterTuner) and start it."""
    from sagemaker.core.shapes import CheckpointConfig, StoppingCondition

    name = args.job_name or driver.default_job_name(JOB_PREFIX)
    if len(name) > 32:
        raise SettingsError(f"--job-name {name!r} is longer than 32 characters")
    stopping = StoppingCondition(max_runtime_in_seconds=args.max_run)
    checkpoint = None
    if args.spot:
        driver.check_spot_wait(args)
        stopping.max_wait_time_in_seconds = args.max_wait
        checkpoint = CheckpointConfig(s3_uri=driver.checkpoint_uri(args, ctx.settings, name),
                                      local_path=CHECKPOINT_LOCAL_PATH)
    # ModelTrainer checks the role with IAM (iam:SimulatePrincipalPolicy, iam:GetRole) unless
    # SAGEMAKER_VALIDATE_ROLE=false; many CI identities may pass a role but not simulate it.
    previous = os.environ.get(VALIDATE_ROLE_ENV)
    os.environ[VALIDATE_ROLE_ENV] = "true" if args.validate_role else "false"
    try:
        trainer = _model_trainer(ctx, args, static, stopping, checkpoint, name)
    finally:
        if previous is None:
            os.environ.pop(VALIDATE_ROLE_ENV, None)
        else:
            os.environ[VALIDATE_ROLE_ENV] = previous
    tuner = tuner_class()(
        model_trainer=trainer,
        objective_metric_name=args.objective,
        objective_type=OBJECTIVES[args.objective],
        hyperparameter_ranges={n: r.to_sdk() for n, r in ranges.items()},
        metric_definitions=[dict(d) for d in METRIC_DEFINITIONS],
        strategy=args.strategy,
        max_jobs=args.max_jobs,
        max_parallel_jobs=args.max_parallel_jobs,
        early_stopping_type=args.early_stopping,
    )
    tuner.tune(inputs=inputs, job_name=name, wait=False)
    return name


def tuner_class() -> type:
    """The SDK's HyperparameterTuner, passing network isolation on: SDK 3.27 copies only the
    VPC part of ModelTrainer.networking into the tuning job's training definition and drops
    enable_network_isolation."""
    from sagemaker.train.tuner import HyperparameterTuner

    class Tuner(HyperparameterTuner):
        def _build_training_job_definition(self, inputs: Any) -> Any:
            definition = super()._build_training_job_definition(inputs)
            networking = getattr(self.model_trainer, "networking", None)
            if networking is not None and networking.enable_network_isolation:
                definition.enable_network_isolation = True
            return definition

    return Tuner


def _model_trainer(ctx: driver.DriverContext, args: argparse.Namespace, static: dict[str, Any],
                   stopping: Any, checkpoint: Any, name: str) -> Any:
    from sagemaker.core.shapes import OutputDataConfig
    from sagemaker.core.training.configs import Compute, Networking
    from sagemaker.train.model_trainer import ModelTrainer

    s = ctx.settings
    return ModelTrainer(
        training_image=s.train_image,
        role=s.role,
        sagemaker_session=ctx.sagemaker_session(),
        compute=Compute(instance_type=s.train_instance_type, instance_count=args.instance_count,
                        volume_size_in_gb=args.volume_size,
                        enable_managed_spot_training=args.spot),
        stopping_condition=stopping,
        checkpoint_config=checkpoint,
        output_data_config=OutputDataConfig(s3_output_path=s.s3("tuning", name, "output")),
        hyperparameters=request_values(static),
        networking=Networking(enable_network_isolation=True) if args.network_isolation else None,
        base_job_name=JOB_PREFIX,
    )


# -- following and results --------------------------------------------------------------------

def clean_hyperparameters(raw: dict[str, str]) -> dict[str, Any]:
    """A job's hyperparameters as typed values; SageMaker's own keys dropped."""
    clean: dict[str, Any] = {}
    for name, value in sorted(raw.items()):
        if name.startswith(("sagemaker_", "_")):
            continue
        try:
            clean[canonical_name(name)] = parse_value(name, value)
        except HyperparameterError:
            clean[name] = value.strip('"')  # not ours: keep it as SageMaker reported it
    return clean


def trial_rows(summaries: list[dict[str, Any]], tuned: list[str]) -> list[list[str]]:
    """One row per trial: name, status, tuned values, objective (as text)."""
    rows = []
    for t in summaries:
        hps = clean_hyperparameters(t.get("TunedHyperParameters", {}))
        objective = t.get("FinalHyperParameterTuningJobObjectiveMetric", {}).get("Value")
        status = t.get("TrainingJobStatus", "?")
        if t.get("ObjectiveStatus") == "Failed" and status == "Completed":
            status = "Completed*"  # completed without reporting the objective
        rows.append([t.get("TrainingJobName", "?"), status,
                     *(driver.fmt_value(hps.get(n)) for n in tuned),
                     driver.fmt_value(objective)])
    return rows


def list_trials(sm: Any, name: str) -> list[dict[str, Any]]:
    """Every trial of the tuning job, oldest first, read page by page (boto3's paginator)."""
    pages = sm.get_paginator("list_training_jobs_for_hyper_parameter_tuning_job").paginate(
        HyperParameterTuningJobName=name, SortBy="CreationTime", SortOrder="Ascending")
    return [t for page in pages for t in page.get("TrainingJobSummaries", [])]


def tuned_names(job: dict[str, Any]) -> list[str]:
    ranges = job["HyperParameterTuningJobConfig"].get("ParameterRanges", {})
    return [r["Name"] for kind in ("ContinuousParameterRanges", "IntegerParameterRanges",
                                   "CategoricalParameterRanges")
            for r in ranges.get(kind, [])]


class TrialsView:
    """The trials table while a tuning job runs: a live table (rich) on a terminal; elsewhere
    (a log file, CI) one plain line per change: the job's status, then each trial whose row
    changed. No escape codes outside a terminal."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self.live: Any = None
        self.shown: dict[str, list[str]] = {}
        self.last_status = ""

    def update(self, status: str, header: list[str], rows: list[list[str]]) -> None:
        if hasattr(self.out, "isatty") and self.out.isatty():
            self._draw(status, header, rows)
            return
        lines = [status] if status != self.last_status else []
        for row in rows:
            if self.shown.get(row[0]) != row:
                named = [f"{h}={v}" for h, v in zip(header[2:], row[2:], strict=True)]
                lines.append("  ".join(["", *row[:2], *named]))
                self.shown[row[0]] = row
        self.last_status = status
        if lines:
            self.out.write("\n".join(lines) + "\n")
            self.out.flush()

    def _draw(self, status: str, header: list[str], rows: list[list[str]]) -> None:
        from rich.console import Console
        from rich.live import Live
        from rich.table import Table

        table = Table(*header, title=status, title_justify="left")
        for row in rows:
            table.add_row(*row)
        if self.live is None:
            self.live = Live(table, console=Console(file=self.out), auto_refresh=False)
            self.live.start()
        self.live.update(table, refresh=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()


def default_timeout(job: dict[str, Any]) -> int:
    """What SageMaker lets the tuning job take: its trials in rounds of the parallel limit,
    each up to its MaxWait (or MaxRuntime), plus slack per round."""
    limits = job["HyperParameterTuningJobConfig"].get("ResourceLimits", {})
    if limits.get("MaxRuntimeInSeconds"):
        return int(limits["MaxRuntimeInSeconds"]) + WAIT_SLACK_S
    stop = (job.get("TrainingJobDefinition") or {}).get("StoppingCondition", {})
    per_trial = stop.get("MaxWaitTimeInSeconds") or stop.get("MaxRuntimeInSeconds") or 24 * 3600
    trials = limits.get("MaxNumberOfTrainingJobs") or 1
    rounds = -(-int(trials) // int(limits.get("MaxParallelTrainingJobs") or 1))
    return rounds * (int(per_trial) + WAIT_SLACK_S)


def follow(ctx: driver.DriverContext, name: str, poll: float, timeout: int | None = None,
           out: Any = None) -> dict[str, Any]:
    """Poll the tuning job until it ends (boto3 has no waiter for tuning jobs, and the table
    needs every poll), showing the trials as they change; DriverError past ``timeout``."""
    sm = ctx.client("sagemaker")
    view = TrialsView(out or sys.stderr)
    start = time.monotonic()
    try:
        while True:
            job = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
            timeout = timeout or default_timeout(job)
            tuned = tuned_names(job)
            counters = job.get("TrainingJobStatusCounters", {})
            status = (f"{name}: {job['HyperParameterTuningJobStatus']}  "
                      + " ".join(f"{k}={v}" for k, v in counters.items()))
            view.update(status, ["trial", "status", *tuned, "objective"],
                        trial_rows(list_trials(sm, name), tuned))
            if job["HyperParameterTuningJobStatus"] in TERMINAL:
                return job
            if time.monotonic() - start >= timeout:
                raise driver.DriverError(
                    f"tuning job {name} has not ended after {timeout} s of waiting; it keeps "
                    f"running: python scripts/tune.py --attach {name} --wait")
            time.sleep(poll)
    finally:
        view.close()


def best_job(ctx: driver.DriverContext, name: str) -> dict[str, Any]:
    """The best trial of a tuning job, with clean typed hyperparameters and final metrics."""
    sm = ctx.client("sagemaker")
    job = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    best = job.get("BestTrainingJob")
    if not best:
        reason = job.get("FailureReason") or "no trial has reported the objective yet"
        raise driver.DriverError(f"tuning job {name} ({job['HyperParameterTuningJobStatus']}) "
                                 f"has no best training job: {reason}")
    training = sm.describe_training_job(TrainingJobName=best["TrainingJobName"])
    objective = job["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]
    return {
        "format": BEST_FILE_FORMAT,
        "region": ctx.region,
        "tuning_job_name": name,
        "tuning_job_status": job["HyperParameterTuningJobStatus"],
        "training_job_name": best["TrainingJobName"],
        "training_job_status": training.get("TrainingJobStatus"),
        "objective": {
            "metric": objective["MetricName"],
            "type": objective["Type"],
            "value": best.get("FinalHyperParameterTuningJobObjectiveMetric", {}).get("Value"),
        },
        "hyperparameters": clean_hyperparameters(training.get("HyperParameters", {})),
        "tuned_hyperparameters": sorted(
            canonical_name(k) for k in best.get("TunedHyperParameters", {})),
        "final_metrics": {m["MetricName"]: m["Value"]
                          for m in training.get("FinalMetricDataList", [])},
        "model_data": training.get("ModelArtifacts", {}).get("S3ModelArtifacts"),
        "training_image": training.get("AlgorithmSpecification", {}).get("TrainingImage"),
    }


def write_report(ctx: driver.DriverContext, directory: Path | None, name: str) -> None:
    if directory is not None:
        from drivers.tuning_report import report_tuning_job

        page = report_tuning_job(ctx.client("sagemaker"), name, directory)
        ctx.log(f"wrote {page} and {page.parent / 'trials.csv'}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--local" in argv:  # Optuna on this machine; imports neither the SDK nor boto3
        from drivers import local_tuning as tune_local

        return tune_local.main([a for a in argv if a != "--local"])
    args = build_parser().parse_args(argv)

    def body() -> int:
        required = ["region"] if args.attach else ["region", "role", "bucket", "train_image"]
        settings = resolve(args, required, image="train")
        if args.attach:
            name = args.attach
        else:
            static = parse_static(driver.parse_key_values(args.static, "--set"))
            ranges = build_ranges(driver.parse_key_values(args.range, "--range"), static)
            static = trial_static(static, ranges, args.serving_variants)
            inputs = driver.data_channels(args)
            check_imagenet_weights(trial_weights(static, ranges), settings,
                                   args.image_has_imagenet_weights)
        ctx = driver.open_context(settings, args.dry_run)
        if not args.attach:
            driver.complete_settings(ctx, ["bucket", "role"])
            name = start_tuning_job(ctx, args, ranges, static, inputs)
            ctx.did("create", f"tuning job {name} ({args.max_jobs} trials, "
                    f"{args.max_parallel_jobs} at a time, objective {args.objective})")
        if ctx.dry_run:
            driver.finish(ctx)
            return 0
        if not args.wait:
            write_report(ctx, args.report, name)
            ctx.log(f"follow it with: python scripts/tune.py --attach {name} --wait")
            return 0
        job = follow(ctx, name, args.poll, args.timeout)
        write_report(ctx, args.report, name)
        best = best_job(ctx, name)
        driver.print_best(best, sys.stdout)
        driver.write_best(args.best_out, best, sys.stderr)
        return 0 if job["HyperParameterTuningJobStatus"] == "Completed" else driver.EXIT_FAILED

    return driver.run(body)


if __name__ == "__main__":
    sys.exit(main())
