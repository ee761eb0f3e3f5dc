#!/usr/bin/env python3
"""Send images to a SageMaker endpoint or a local server and print the top-k classes.

    python scripts/predict.py --endpoint resnet-serve-261127-2040 cat.jpg dog.png
    python scripts/predict.py --url http://localhost:8080 --top-k 3 sample.jpg
    python scripts/predict.py --async --endpoint resnet-serve-261127-2040 big-photo.jpg
    python scripts/predict.py --endpoint resnet-serve-261201-2300 --target-model a.tar.gz x.jpg

One request per file; the content type comes from the file's bytes (JPEG, PNG, WebP, GIF, BMP,
TIFF) or its name, ``--content-type`` overrides it. ``top_k`` travels in the
``X-Amzn-SageMaker-Custom-Attributes`` header (``CustomAttributes`` for InvokeEndpoint).
Needs boto3 for ``--endpoint`` and nothing beyond the standard library for ``--url``.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from drivers import common as driver
from drivers.aws_settings import SettingsError, add_account_arguments, check_s3_uri, resolve
from drivers.requests_log import to_jsonable
from job_contract.media import sniff_image

ACCEPT = "application/json"
CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"
TARGET_MODEL_HEADER = "X-Amzn-SageMaker-Target-Model"


def content_type_of(path: Path, data: bytes) -> str:
    """The media type from the bytes (what the server sniffs too), else from the name."""
    if (image := sniff_image(data)) is not None:
        return image.media_type
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="predict.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--endpoint", help="SageMaker endpoint name (needs boto3 and a region)")
    target.add_argument("--url", help="a local server, e.g. http://localhost:8080 "
                                      "(/invocations is added when the path is empty)")
    add_account_arguments(p)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--content-type", help="override the content type of every file")
    p.add_argument("--json", action="store_true", help="print the raw responses as JSON")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request (--url)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the exact requests as JSON on stdout and send nothing")
    add_async_arguments(p)
    return p


# Waiting for an asynchronous result: HeadObject on the output and failure objects, the pause
# growing from the first to the last value (SageMaker writes each object once, whole).
ASYNC_POLL_FIRST_S = 1.0
ASYNC_POLL_MAX_S = 15.0
ASYNC_POLL_GROWTH = 1.5
INPUTS_FOLDER = "inputs"


def add_async_arguments(p: argparse.ArgumentParser) -> None:
    a = p.add_argument_group("asynchronous endpoints (deploy.py --async-output)")
    a.add_argument("--async", dest="use_async", action="store_true",
                   help="upload each file to S3, InvokeEndpointAsync, wait for its result")
    a.add_argument("--input-location", metavar="S3_PREFIX",
                   help="where the files are uploaded (default: the endpoint's S3OutputPath/"
                        f"{INPUTS_FOLDER}/)")
    a.add_argument("--wait-timeout", type=float, default=900.0, metavar="SECONDS",
                   help="how long to wait for each result (default 900)")
    a.add_argument("--invocation-timeout", type=int, metavar="SECONDS",
                   help="InvocationTimeoutSeconds: how long the endpoint may work on a "
                        "request (1-3600; default SageMaker's 900)")
    add_target_model_argument(p)
    return p


def add_target_model_argument(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("multi-model endpoint (deploy.py --multi-model)")
    g.add_argument("--target-model", metavar="KEY",
                   help="the model to run: its key under the endpoint's S3 prefix "
                        "(TargetModel); with --url, the name a model was loaded under "
                        "(POST /models/NAME/invoke)")


def target_model_params(args: argparse.Namespace) -> dict[str, str]:
    """InvokeEndpoint's TargetModel, when given."""
    return {"TargetModel": args.target_model} if args.target_model else {}


def local_url(args: argparse.Namespace) -> str:
    """--url's /invocations, or a multi-model server's /models/NAME/invoke."""
    url = invocations_url(args.url)
    if not args.target_model:
        return url
    parts = urllib.parse.urlsplit(url)
    if parts.path != "/invocations":
        raise SettingsError("--target-model with --url takes the server's address without a "
                            f"path, got {args.url!r}")
    name = urllib.parse.quote(args.target_model, safe="")
    return urllib.parse.urlunsplit(parts._replace(path=f"/models/{name}/invoke"))


def invocations_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError(f"--url must be http(s)://HOST[:PORT][/PATH], got {url!r}")
    if parts.path in ("", "/"):
        parts = parts._replace(path="/invocations")
    return urllib.parse.urlunsplit(parts)


class HttpError(driver.DriverError):
    """The local server answered with an error or could not be reached."""


def post_local(url: str, body: bytes, headers: dict[str, str], timeout: float) -> dict[str, Any]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:500]
        raise HttpError(f"HTTP {exc.code}: {detail}") from None
    except urllib.error.URLError as exc:
        raise HttpError(f"cannot reach {url}: {exc.reason}") from None


def rows_of(response: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """Each image's top-k list; the serving API wraps it as {"predictions": [{"top_k": [..]}]}."""
    rows = []
    for item in response.get("predictions", []):
        rows.append(item.get("top_k", []) if isinstance(item, dict) else list(item))
    return rows


def table(results: list[tuple[str, dict[str, Any]]]) -> str:
    lines = [f"{'file':<32} {'rank':>4}  {'label':<24} {'probability':>11}"]
    for name, response in results:
        for image_rows in rows_of(response):
            for rank, row in enumerate(image_rows, 1):
                lines.append(f"{(name if rank == 1 else ''):<32.32} {rank:>4}  "
                             f"{row.get('label')!s:<24.24} {row.get('probability', 0):>11.4f}")
    return "\n".join(lines)


Payload = tuple[Path, bytes, str]  # file, its bytes, its content type


def read_payloads(args: argparse.Namespace) -> list[Payload]:
    payloads = []
    for path in args.files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SettingsError(f"cannot read {path}: {exc.strerror}") from None
        payloads.append((path, data, args.content_type or content_type_of(path, data)))
    return payloads


def send_local(args: argparse.Namespace, payloads: list[Payload],
               attributes: str) -> list[tuple[str, dict[str, Any]]] | None:
    """POST each file to the local server; in a dry run print the requests, return None."""
    url = local_url(args)
    target = {TARGET_MODEL_HEADER: args.target_model} if args.target_model else {}
    requests = [{"url": url, "method": "POST",
                 "headers": {"Content-Type": ctype, "Accept": ACCEPT,
                             CUSTOM_ATTRIBUTES_HEADER: attributes, **target},
                 "body": data} for _, data, ctype in payloads]
    if args.dry_run:
        print(json.dumps(to_jsonable(requests), indent=2))
        return None
    return [(path.name, post_local(url, request["body"], request["headers"], args.timeout))
            for (path, _, _), request in zip(payloads, requests, strict=True)]


def send_endpoint(args: argparse.Namespace, payloads: list[Payload],
                  attributes: str) -> list[tuple[str, dict[str, Any]]] | None:
    """InvokeEndpoint for each file; in a dry run print the requests, return None."""
    ctx = driver.open_context(resolve(args, ["region"]), args.dry_run)
    runtime = ctx.client("sagemaker-runtime")
    results = []
    for path, data, ctype in payloads:
        response = runtime.invoke_endpoint(
            EndpointName=args.endpoint, ContentType=ctype, Accept=ACCEPT,
            CustomAttributes=attributes, Body=data, **target_model_params(args))
        if not args.dry_run:
            results.append((path.name, json.loads(response["Body"].read())))
    if args.dry_run:
        driver.finish(ctx)
        return None
    return results


def check_async_args(args: argparse.Namespace) -> None:
    if not args.use_async:
        if args.input_location or args.invocation_timeout is not None:
            raise SettingsError("--input-location and --invocation-timeout apply to --async")
        return
    if args.url:
        raise SettingsError("--async invokes a SageMaker endpoint: use it with --endpoint, "
                            "not --url")
    if args.target_model:
        raise SettingsError("--async takes no --target-model: InvokeEndpointAsync has no "
                            "TargetModel (multi-model endpoints answer real-time requests)")
    if args.invocation_timeout is not None and not 1 <= args.invocation_timeout <= 3600:
        raise SettingsError("--invocation-timeout must be 1-3600 seconds")
    if args.wait_timeout < 0:
        raise SettingsError("--wait-timeout must be 0 or more seconds")


def split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key


def input_prefix(ctx: driver.DriverContext, args: argparse.Namespace) -> str:
    """--input-location, else INPUTS_FOLDER under the endpoint's S3OutputPath."""
    if args.input_location:
        return check_s3_uri(args.input_location, "--input-location").rstrip("/") + "/"
    sm = ctx.client("sagemaker")
    config_name = sm.describe_endpoint(EndpointName=args.endpoint)["EndpointConfigName"]
    config = sm.describe_endpoint_config(EndpointConfigName=config_name)
    output = config.get("AsyncInferenceConfig", {}).get("OutputConfig", {}).get("S3OutputPath")
    if output:
        return f"{output.rstrip('/')}/{INPUTS_FOLDER}/"
    if ctx.dry_run:  # placeholder answers hold no AsyncInferenceConfig
        return f"s3://dry-run/{INPUTS_FOLDER}/"
    raise SettingsError(f"endpoint {args.endpoint} is not asynchronous (endpoint config "
                        f"{config_name} has no AsyncInferenceConfig): drop --async, or deploy "
                        "it with deploy.py --async-output S3_URI")


def upload(ctx: driver.DriverContext, prefix: str, payload: Payload) -> str:
    """PutObject of one file under the prefix (a unique name each time); its S3 URI."""
    path, data, ctype = payload
    bucket, key = split_s3(f"{prefix}{uuid.uuid4().hex[:12]}-{path.name}")
    ctx.client("s3").put_object(Bucket=bucket, Key=key, Body=data, ContentType=ctype)
    return f"s3://{bucket}/{key}"


def invoke_async(ctx: driver.DriverContext, args: argparse.Namespace, location: str,
                 ctype: str, attributes: str) -> dict[str, Any]:
    request: dict[str, Any] = {"EndpointName": args.endpoint, "InputLocation": location,
                               "ContentType": ctype, "Accept": ACCEPT,
                               "CustomAttributes": attributes}
    if args.invocation_timeout is not None:
        request["InvocationTimeoutSeconds"] = args.invocation_timeout
    return ctx.client("sagemaker-runtime").invoke_endpoint_async(**request)


def s3_object(s3: Any, uri: str) -> bytes | None:
    """The object's bytes, or None while it does not exist (HeadObject answers 404)."""
    from botocore.exceptions import ClientError

    bucket, key = split_s3(uri)
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def failure_reason(body: bytes) -> str:
    """One line from a failure object (the serving API's error JSON, or SageMaker's text)."""
    text = body.decode("utf-8", "replace")
    try:
        text = str(json.loads(text).get("message", text))
    except (ValueError, AttributeError):
        pass
    return " ".join(text.split())[:500]


def wait_result(ctx: driver.DriverContext, name: str, response: dict[str, Any],
                timeout: float) -> dict[str, Any]:
    """Poll the output and failure objects with a growing pause until one exists or the
    time-out passes; the output's JSON, or DriverError with one line."""
    s3, output = ctx.client("s3"), response["OutputLocation"]
    failure = response.get("FailureLocation")
    deadline, pause = time.monotonic() + timeout, ASYNC_POLL_FIRST_S
    while True:
        if (body := s3_object(s3, output)) is not None:
            try:
                return json.loads(body)
            except ValueError:
                raise driver.DriverError(f"{name}: {output} is not JSON") from None
        if failure and (body := s3_object(s3, failure)) is not None:
            raise driver.DriverError(f"{name}: the endpoint failed ({failure}): "
                                     f"{failure_reason(body)}")
        left = deadline - time.monotonic()
        if left <= 0:
            raise driver.DriverError(
                f"{name}: no result at {output} after {timeout:g} s (inference "
                f"{response.get('InferenceId')} may still be queued; its result lands there)")
        time.sleep(min(pause, left))
        pause = min(pause * ASYNC_POLL_GROWTH, ASYNC_POLL_MAX_S)


def send_async(args: argparse.Namespace, payloads: list[Payload],
               attributes: str) -> list[tuple[str, dict[str, Any]]] | None:
    """Upload every file and InvokeEndpointAsync each, then wait for each result; in a dry run
    print the requests, return None."""
    ctx = driver.open_context(resolve(args, ["region"]), args.dry_run)
    prefix = input_prefix(ctx, args)
    queued = []
    for payload in payloads:
        location = upload(ctx, prefix, payload)
        response = invoke_async(ctx, args, location, payload[2], attributes)
        ctx.log(f"queued {payload[0].name} ({location}): result at "
                f"{response.get('OutputLocation', '(the answer says where)')}")
        queued.append((payload[0].name, response))
    if args.dry_run:
        driver.finish(ctx)
        return None
    return [(name, wait_result(ctx, name, response, args.wait_timeout))
            for name, response in queued]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if args.top_k < 1:
            raise SettingsError("--top-k must be at least 1")
        check_async_args(args)
        payloads = read_payloads(args)
        send = send_async if args.use_async else send_local if args.url else send_endpoint
        results = send(args, payloads, f"top_k={args.top_k}")
        if results is None:  # a dry run: the requests are printed
            return 0
        if args.json:
            print(json.dumps({name: response for name, response in results}, indent=2))
        else:
            print(table(results))
        return 0

    return driver.run(body)


if __name__ == "__main__":
    sys.exit(main())
