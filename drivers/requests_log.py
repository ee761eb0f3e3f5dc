"""See (and, for ``--dry-run``, answer) every AWS API call a boto3 session makes.

The SageMaker Python SDK v3 builds its own clients from the boto3 session it is given, so the
one place that sees every request is the session's event system: ``before-parameter-build``
carries the API parameters as the caller wrote them, and a ``before-call`` handler that returns
a response short-circuits the call before it is signed or sent. In dry-run mode the recorder
answers every call with a fake response built from the operation's output shape (echoing the
matching Create request for Describe calls, so the SDK's resource objects validate), and a
guard makes any request that would still reach the network fail loudly.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

DRY_RUN_ACCOUNT = "000000000000"


@dataclass
class ApiCall:
    service: str
    operation: str
    params: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"service": self.service, "operation": self.operation,
                "params": to_jsonable(self.params)}


def to_jsonable(value: Any) -> Any:
    """Requests as JSON: datetimes in ISO format, bytes as base64 plus length and digest."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, bytes | bytearray):
        data = bytes(value)
        return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                "base64": base64.b64encode(data).decode() if len(data) <= 4096 else None}
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if hasattr(value, "read"):  # a stream body
        return {"stream": repr(value)}
    return value


def _kebab(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


class NetworkGuard:
    """While installed, any request that reaches botocore's HTTP layer raises."""

    def __init__(self) -> None:
        self._original: Any = None

    def install(self) -> None:
        import botocore.endpoint

        if self._original is not None:
            return
        self._original = botocore.endpoint.Endpoint.make_request

        def refuse(endpoint: Any, operation_model: Any, request_dict: Any) -> Any:
            raise RuntimeError(
                f"dry run: refused to send {operation_model.name} to {endpoint.host}; "
                "a client was created outside the recorded session"
            )

        botocore.endpoint.Endpoint.make_request = refuse

    def uninstall(self) -> None:
        import botocore.endpoint

        if self._original is not None:
            botocore.endpoint.Endpoint.make_request = self._original
            self._original = None


@dataclass
class ApiRecorder:
    """Record the calls of one boto3 session; with ``dry_run`` answer them instead of sending."""

    dry_run: bool = False
    # operation -> canned answer (a dict, or a callable taking the params): answered even when
    # not a dry run; a "Error" key with "__status__" >= 300 makes botocore raise ClientError
    responses: dict[str, Any] = field(default_factory=dict)
    calls: list[ApiCall] = field(default_factory=list)
    _pending: dict[str, dict[str, Any]] = field(default_factory=dict)
    _region: str = "us-east-1"

    def attach(self, boto_session: Any) -> ApiRecorder:
        self._region = boto_session.region_name or self._region
        events = boto_session.events
        events.register("before-parameter-build", self._before_parameter_build)
        events.register("before-call", self._before_call)
        return self

    def _before_parameter_build(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        key = f"{model.service_model.service_name}.{model.name}"
        try:
            self._pending[key] = copy.deepcopy(params)
        except Exception:  # a stream body cannot be copied: keep the reference
            self._pending[key] = dict(params)

    def _before_call(self, model: Any, params: dict[str, Any], **_: Any) -> Any:
        service = model.service_model.service_name
        key = f"{service}.{model.name}"
        call = ApiCall(service, model.name, self._pending.pop(key, {}))
        self.calls.append(call)
        if model.name in self.responses:
            canned = self.responses[model.name]
            body = dict(canned(call.params) if callable(canned) else canned)
            status = body.pop("__status__", 200)
            return SimpleNamespace(status_code=status, headers={}), body
        if not self.dry_run:
            return None
        return SimpleNamespace(status_code=200, headers={}), self._fake_response(model, call)

    # -- dry-run answers --------------------------------------------------------------------

    def _fake_response(self, model: Any, call: ApiCall) -> dict[str, Any]:
        output = model.output_shape
        if output is None:
            return {"ResponseMetadata": {"HTTPStatusCode": 200}}
        echo: dict[str, Any] = {}
        if model.name.startswith("Describe"):
            created = "Create" + model.name[len("Describe"):]
            for previous in reversed(self.calls):
                if previous.operation == created and previous.service == call.service:
                    echo = previous.params
                    break
            echo = {**call.params, **echo}
        response = self._fill(output, echo, model.name, depth=0)
        response["ResponseMetadata"] = {"HTTPStatusCode": 200, "DryRun": True}
        return response

    def _fill(self, shape: Any, echo: Any, context: str, depth: int) -> Any:
        type_name = shape.type_name
        if type_name == "structure":
            echo = echo if isinstance(echo, dict) else {}
            result: dict[str, Any] = {}
            for member_name, member in shape.members.items():
                if member_name in echo:
                    result[member_name] = self._fill(member, echo[member_name], member_name,
                                                     depth + 1)
                elif member_name in shape.required_members and depth < 8:
                    result[member_name] = self._fill(member, None, member_name, depth + 1)
            return result
        if type_name == "list":
            if isinstance(echo, list):
                return [self._fill(shape.member, item, context, depth + 1) for item in echo]
            return []
        if type_name == "map":
            return dict(echo) if isinstance(echo, dict) else {}
        if echo is not None:
            return echo
        if type_name == "string":
            if getattr(shape, "enum", None):
                return shape.enum[0]
            if "S3" in context or context.endswith("Url"):
                return f"s3://dry-run/{_kebab(context)}"
            if context.endswith("Arn"):
                resource = _kebab(context[: -len("Arn")])
                return (f"arn:aws:sagemaker:{self._region}:{DRY_RUN_ACCOUNT}:"
                        f"{resource}/dry-run")
            return "dry-run"
        if type_name == "timestamp":
            return dt.datetime.now(dt.timezone.utc)
        if type_name in ("integer", "long"):
            return 0
        if type_name in ("float", "double"):
            return 0.0
        if type_name == "boolean":
            return False
        if type_name == "blob":
            return b""
        return None

    # -- output -------------------------------------------------------------------------------

    def requests(self, *, include_reads: bool = True) -> list[dict[str, Any]]:
        reads = ("Describe", "List", "Get")
        return [c.to_json() for c in self.calls
                if include_reads or not c.operation.startswith(reads)]

    def dump(self, *, include_reads: bool = True) -> str:
        return json.dumps(self.requests(include_reads=include_reads), indent=2, sort_keys=False)


def make_session(region: str, recorder: ApiRecorder, guard: NetworkGuard | None = None,
                 profile: str | None = None) -> Any:
    """A boto3 session for ``region`` (credentials of ``profile``, else boto3's usual chain)
    whose every call goes through ``recorder``.

    In dry-run mode the session gets placeholder credentials (nothing is signed or sent, so
    the profile's credentials are not needed) and a guard that refuses any request made
    outside it.
    """
    import boto3

    if recorder.dry_run:
        session = boto3.session.Session(region_name=region, aws_access_key_id="dry-run",
                                        aws_secret_access_key="dry-run")
        (guard or NetworkGuard()).install()
    else:
        session = boto3.session.Session(region_name=region, profile_name=profile)
    recorder.attach(session)
    return session
