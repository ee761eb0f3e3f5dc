"""Where a command's model comes from: ``--model-data``, ``--training-job`` or ``--from-best``
(deploy.py and transform.py take the same three; the commands are peers, so it lives here)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from drivers import common as driver
from drivers.aws_settings import check_s3_uri, s3_uri_type
from job_contract.hyperparameters import SPECS_BY_NAME, HyperparameterError, parse_value


def add_model_arguments(group: argparse._MutuallyExclusiveGroup) -> None:
    """The three ways to name a model, in a mutually exclusive group."""
    group.add_argument("--model-data", type=s3_uri_type, metavar="S3_URI",
                       help="the model.tar.gz a training job wrote")
    group.add_argument("--training-job", metavar="NAME", help="use this training job's artifact")
    group.add_argument("--from-best", type=Path, metavar="FILE",
                       help="the best job file tune.py wrote")


def model_data_url(ctx: driver.DriverContext, args: argparse.Namespace) -> str:
    """The model.tar.gz's S3 URI: given, from the best-job file, or from a completed training
    job (DescribeTrainingJob; a dry run takes the job as it is)."""
    if args.model_data:
        return args.model_data
    if args.from_best:
        best = driver.load_best(args.from_best)
        url = check_s3_uri(best.get("model_data") or "", f"model_data in {args.from_best}")
        warn_if_not_compiled(ctx, best.get("hyperparameters"), f"the best trial in "
                             f"{args.from_best} ({best.get('training_job_name')})")
        return url
    from sagemaker.core.resources import TrainingJob

    job = TrainingJob.get(training_job_name=args.training_job, session=ctx.boto_session,
                          region=ctx.region)
    if job.training_job_status != "Completed" and not ctx.dry_run:
        raise driver.DriverError(f"training job {args.training_job} is {job.training_job_status}"
                                 f" ({job.failure_reason}); only a completed job has a model")
    warn_if_not_compiled(ctx, job.hyper_parameters, f"training job {args.training_job}")
    return job.model_artifacts.s3_model_artifacts


def compiled(hyperparameters: Any) -> bool:
    """Whether a job with these hyperparameters (typed, or as SageMaker returns them) wrote
    the compiled variant; the image's default when they do not say or cannot be read."""
    raw = hyperparameters.get("compile") if isinstance(hyperparameters, Mapping) else None
    try:
        return bool(parse_value("compile", raw)) if raw is not None else \
            bool(SPECS_BY_NAME["compile"].default)
    except HyperparameterError:
        return bool(SPECS_BY_NAME["compile"].default)


def warn_if_not_compiled(ctx: driver.DriverContext, hyperparameters: Any, source: str) -> None:
    """One line when the model has no compiled fp32 variant (a tuning trial's, compile=false):
    it serves, but from its slower TorchScript graph; say how to get the compiled one."""
    if compiled(hyperparameters):
        return
    ctx.log(f"warning: {source} ran with compile=false (tuning trials skip it), so its model "
            "has no compiled variant and serves its slower TorchScript graph; for a compiled "
            "one: python scripts/train.py --from-best best_training_job.json --data S3_URI "
            "--wait, then deploy that job with --training-job NAME")
