"""What every driver does around its own work: session, dry run, errors, exit codes.

Exit codes: 0 done; 1 an AWS call or a job failed; 2 a setting or argument is wrong or missing
(found before any request that creates or deletes something).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from drivers.aws_settings import Settings, SettingsError
from drivers.requests_log import ApiRecorder, NetworkGuard, make_session

EXIT_FAILED = 1
EXIT_USAGE = 2
# What a dry run says instead of the past tense: nothing was sent.
PAST = {"create": "created", "delete": "deleted", "start": "started",
        "deregister": "deregistered", "register": "registered"}


class DriverError(Exception):
    """A job or resource ended badly; the message says which and why."""


@dataclass
class Context:
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
                 recorder: ApiRecorder | None = None) -> Context:
    recorder = recorder or ApiRecorder(dry_run=dry_run)
    recorder.dry_run = dry_run
    guard = NetworkGuard()
    assert settings.region
    session = make_session(settings.region, recorder, guard, profile=settings.profile)
    return Context(settings, dry_run, recorder, session, guard)


def complete_settings(ctx: Context, needed: Iterable[str]) -> None:
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


def _aws_reason(exc: Exception) -> str:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"AWS said {err.get('Code')}: {err.get('Message')}"
    return str(exc) or type(exc).__name__


def _default_bucket(ctx: Context) -> str:
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


def _execution_role(ctx: Context) -> str:
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
        print("interrupted (the job keeps running in SageMaker)", file=sys.stderr)
        return 130
    except Exception as exc:  # botocore errors, SDK errors: say what AWS said
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            print(f"failed: AWS said {err.get('Code')}: {err.get('Message')}", file=sys.stderr)
            return EXIT_FAILED
        if isinstance(exc, BotoCoreError):
            print(f"failed: {exc}", file=sys.stderr)
            return EXIT_FAILED
        raise


def finish(ctx: Context) -> None:
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
