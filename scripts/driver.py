"""What every driver does around its own work: session, dry run, errors, exit codes.

Exit codes: 0 done; 1 an AWS call or a job failed; 2 a setting or argument is wrong (found
before any AWS call).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.requests_log import ApiRecorder, NetworkGuard, make_session
from scripts.settings import Settings, SettingsError

EXIT_FAILED = 1
EXIT_USAGE = 2


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


def open_context(settings: Settings, dry_run: bool,
                 recorder: ApiRecorder | None = None) -> Context:
    recorder = recorder or ApiRecorder(dry_run=dry_run)
    recorder.dry_run = dry_run
    guard = NetworkGuard()
    assert settings.region
    session = make_session(settings.region, recorder, guard)
    return Context(settings, dry_run, recorder, session, guard)


def run(main: Callable[[], int]) -> int:
    """Run a driver's body, turning the expected failures into a message and an exit code."""
    from container_train.hyperparameters import HyperparameterError

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
