"""What the drivers share: session, dry run, errors and exit codes, the arguments several
drivers take, job names, the best-job file, NAME=VALUE parsing.

Exit codes: 0 done; 1 an AWS call or a job failed; 2 a setting or argument is wrong or missing
(found before any request that creates or deletes something).

Drivers (tuning_job, training_job, deploy, predict, local_tuning) import this module and the
other shared ones (aws_settings, requests_log, search_space), never each other. Importing it
needs neither boto3 nor the SageMaker SDK.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from drivers.aws_settings import (
    Settings,
    SettingsError,
    add_image_weights_argument,
    check_s3_uri,
)
from drivers.requests_log import ApiRecorder, NetworkGuard, make_session

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# Time a job spends outside its MaxRuntime (starting, downloading, uploading) that a default
# --timeout allows for (per job; per round of parallel trials for a tuning job).
WAIT_SLACK_S = 3600
# The best-job file: tune.py (and --local) write it, train.py / deploy.py --from-best read it.
BEST_FILE_FORMAT = "resnet-byoc/best-training-job@1"
DEFAULT_BEST_FILE = "best_training_job.json"
# What a dry run says instead of the past tense: nothing was sent.
PAST = {"create": "created", "delete": "deleted", "start": "started",
        "deregister": "deregistered", "register": "registered"}


class DriverError(Exception):
    """A job or resource ended badly; the message says which and why."""


@dataclass
class DriverContext:
    """A driver's AWS side: settings, the recorded boto3 session, dry run, progress lines."""

    settings: Settings
    dry_run: bool
    recorder: ApiRecorder
    boto_session: Any
    guard: NetworkGuard = field(default_factory=NetworkGuard)

    @property
    def region(self) -> str:
        assert self.settings.region
        return self.settings.region

    def client(self, service: str) -> Any:
        """A boto3 client of the recorded session (for calls the SDK does not have)."""
        return self.boto_session.client(service, region_name=self.region)

    def sagemaker_session(self) -> Any:
        """The SDK v3 session over our boto3 session (default bucket given: no S3 lookup)."""
        from sagemaker.core.helper.session_helper import Session

        return Session(boto_session=self.boto_session, default_bucket=self.settings.bucket,
                       default_bucket_prefix=self.settings.prefix)

    def log(self, message: str) -> None:
        """Progress for people: stderr, so that stdout stays the dry-run JSON."""
        print(message, file=sys.stderr, flush=True)

    def did(self, verb: str, what: str) -> None:
        """'created X' after a request, 'would create X' in a dry run (nothing was sent)."""
        self.log(f"would {verb} {what}" if self.dry_run else f"{PAST[verb]} {what}")


def open_context(settings: Settings, dry_run: bool,
                 recorder: ApiRecorder | None = None) -> DriverContext:
    recorder = recorder or ApiRecorder(dry_run=dry_run)
    recorder.dry_run = dry_run
    guard = NetworkGuard()
    assert settings.region
    session = make_session(settings.region, recorder, guard, profile=settings.profile)
    return DriverContext(settings, dry_run, recorder, session, guard)


def complete_settings(ctx: DriverContext, needed: Iterable[str]) -> None:
    """Fill a missing bucket or role the way the SDK does, with AWS calls (placeholders that
    say so in a dry run); SettingsError naming the flag and variable when that fails."""
    updates: dict[str, str] = {}
    if "bucket" in needed and not ctx.settings.bucket:
        updates["bucket"] = _default_bucket(ctx)
    if "role" in needed and not ctx.settings.role:
        updates["role"] = _execution_role(ctx)
    if updates:
        sources = {**ctx.settings.sources, **{k: "SDK default" for k in updates}}
        ctx.settings = replace(ctx.settings, **updates, sources=sources)


def aws_said(error: dict[str, Any]) -> str:
    """AWS's error code and message, as every driver prints them."""
    return f"AWS said {error.get('Code')}: {error.get('Message')}"


def _aws_reason(exc: Exception) -> str:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        return aws_said(exc.response.get("Error", {}))
    return str(exc) or type(exc).__name__


def _default_bucket(ctx: DriverContext) -> str:
    """The SDK's default bucket, sagemaker-REGION-ACCOUNT (the SDK creates it if missing)."""
    if ctx.dry_run:
        bucket = f"sagemaker-{ctx.region}-<account>"
        ctx.log(f"bucket: would use the SDK's default bucket {bucket} (account from "
                "sts:GetCallerIdentity; the SDK creates the bucket if it is missing)")
        return bucket
    from botocore.exceptions import BotoCoreError, ClientError
    from sagemaker.core.helper.session_helper import Session

    try:
        bucket = Session(boto_session=ctx.boto_session).default_bucket()
    except (BotoCoreError, ClientError, ValueError) as exc:
        raise SettingsError(
            "missing bucket: the SDK's default bucket sagemaker-REGION-ACCOUNT could not be "
            f"found or created ({_aws_reason(exc)}); set --bucket or SAGEMAKER_BUCKET") from None
    ctx.log(f"bucket: {bucket} (the SDK's default bucket)")
    return bucket


def _execution_role(ctx: DriverContext) -> str:
    """This SageMaker Studio/notebook's execution role (settings.resolve let it be missing
    only there)."""
    if ctx.dry_run:
        ctx.log("role: would use this notebook's execution role (the SDK's "
                "get_execution_role)")
        return "arn:aws:iam::<account>:role/<this-notebook-execution-role>"
    from botocore.exceptions import BotoCoreError, ClientError
    from sagemaker.core.helper.session_helper import Session, get_execution_role

    try:
        role = get_execution_role(Session(boto_session=ctx.boto_session))
    except (BotoCoreError, ClientError, ValueError) as exc:
        raise SettingsError(
            f"missing role: this notebook's execution role could not be read "
            f"({_aws_reason(exc)}); set --role or SAGEMAKER_ROLE_ARN") from None
    ctx.log(f"role: {role} (this notebook's execution role)")
    return role


def run(main: Callable[[], int]) -> int:
    """Run a driver's body, turning the expected failures into a message and an exit code."""
    from job_contract.hyperparameters import HyperparameterError

    try:
        return main()
    except (SettingsError, HyperparameterError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DriverError as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted (what was already started in SageMaker keeps running)",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # botocore errors, SDK errors: say what AWS said
        reason = _botocore_reason(exc)
        if reason is None:
            raise
        print(f"failed: {reason}", file=sys.stderr)
        return EXIT_FAILED


def _botocore_reason(exc: Exception) -> str | None:
    """The one line for a botocore error, None for anything else (or without botocore:
    predict.py --url runs on the standard library alone)."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        return None
    if isinstance(exc, ClientError):
        return aws_said(exc.response.get("Error", {}))
    if isinstance(exc, BotoCoreError):
        return str(exc)
    return None


def finish(ctx: DriverContext) -> None:
    """In dry-run mode print every request the driver made, as JSON, on stdout."""
    if ctx.dry_run:
        print(ctx.recorder.dump())
        ctx.guard.uninstall()


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def parse_key_values(pairs: list[str] | None, what: str) -> dict[str, str]:
    """['a=1', 'b=x'] -> {'a': '1', 'b': 'x'}; a pair without '=' is a usage error."""
    result: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"{what} takes NAME=VALUE, got {pair!r}")
        result[key.strip()] = value.strip()
    return result


def default_job_name(prefix: str) -> str:
    """PREFIX-YYMMDD-HHMMSS (UTC): the name of a job or endpoint nobody named."""
    return f"{prefix}-{datetime.now(timezone.utc).strftime('%y%m%d-%H%M%S')}"


# -- arguments several drivers take ------------------------------------------------------------

def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--data or --channel (tune.py, train.py); :func:`data_channels` reads them."""
    data = parser.add_argument_group("data (S3)")
    data.add_argument("--data", metavar="S3_URI",
                      help="one channel 'training' holding train/ valid/ test/ folders")
    data.add_argument("--channel", action="append", metavar="NAME=S3_URI",
                      help="a named channel (train, valid, test); repeatable, instead of --data")


def data_channels(args: argparse.Namespace) -> str | dict[str, str]:
    """The S3 URI of --data, or the --channel name -> URI pairs; each URI checked."""
    channels = parse_key_values(args.channel, "--channel")
    if args.data and channels:
        raise SettingsError("give either --data or --channel, not both")
    if args.data:
        return check_s3_uri(args.data, "--data")
    if not channels:
        raise SettingsError("missing data: set --data S3_URI (one channel holding train/ "
                            "valid/ test/) or --channel train=S3_URI --channel valid=S3_URI")
    for name, uri in channels.items():
        check_s3_uri(uri, f"--channel {name}")
    return channels


def add_network_arguments(group: argparse._ArgumentGroup) -> None:
    """--network-isolation and the image-weights statement (tune.py, train.py)."""
    group.add_argument("--network-isolation", action="store_true",
                       help="run the training containers without network access "
                            "(EnableNetworkIsolation); channels and outputs still move")
    add_image_weights_argument(group)


def checkpoint_uri(args: argparse.Namespace, settings: Settings, name: str) -> str:
    """--checkpoint-s3, else s3://BUCKET/PREFIX/checkpoints/JOB."""
    if args.checkpoint_s3:
        return check_s3_uri(args.checkpoint_s3, "--checkpoint-s3")
    return settings.s3("checkpoints", name)


def check_spot_wait(args: argparse.Namespace) -> None:
    """A spot job waits for capacity within MaxWait, so MaxWait must cover MaxRuntime."""
    if args.max_wait < args.max_run:
        raise SettingsError("--max-wait must be at least --max-run with --spot")


# -- the best-job file -------------------------------------------------------------------------

def write_best(path: Path, best: dict[str, Any], log: TextIO) -> None:
    """Write the best-job file (``best["format"]`` is BEST_FILE_FORMAT) and say so on ``log``."""
    write_json(path, best)
    print(f"wrote {path} (use it with train.py/deploy.py --from-best)", file=log, flush=True)


def load_best(path: Path) -> dict[str, Any]:
    """A best-job file (--from-best); SettingsError when it is unreadable or another format."""
    try:
        best = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SettingsError(f"cannot read --from-best {path}: {exc}") from None
    if not isinstance(best, dict) or best.get("format") != BEST_FILE_FORMAT:
        raise SettingsError(f"{path} is not a best-job file written by tune.py "
                            f"(format {BEST_FILE_FORMAT})")
    return best


def fmt_value(value: Any) -> str:
    """A value in a table or summary: floats to 4 significant digits, None as nothing."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def print_best(best: dict[str, Any], out: TextIO) -> None:
    """The best job of a search: its objective, hyperparameters (tuned ones marked), final
    metrics and where its model is (S3, or a local folder for tune.py --local)."""
    o, local = best["objective"], best.get("local")
    lines = [f"{'best trial' if local else 'best training job'}: {best['training_job_name']} "
             f"({o['metric']} {o['type'].lower()}d: {fmt_value(o['value'])})",
             "hyperparameters:"]
    lines += [f"  {k} = {v!r}" + ("   (tuned)" if k in best["tuned_hyperparameters"] else "")
              for k, v in best["hyperparameters"].items()]
    lines.append("final metrics:")
    lines += [f"  {k} = {fmt_value(v)}" for k, v in sorted(best["final_metrics"].items())]
    lines.append(f"model dir: {local['model_dir']}" if local
                 else f"model data: {best['model_data']}")
    print("\n".join(lines), file=out, flush=True)
