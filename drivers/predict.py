#!/usr/bin/env python3
"""Send images to a SageMaker endpoint or a local server and print the top-k classes.

    python scripts/predict.py --endpoint resnet-serve-261127-2040 cat.jpg dog.png
    python scripts/predict.py --url http://localhost:8080 --top-k 3 sample.jpg
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
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from drivers import common as driver
from drivers.aws_settings import SettingsError, add_account_arguments, resolve
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if args.top_k < 1:
            raise SettingsError("--top-k must be at least 1")
        payloads = read_payloads(args)
        send = send_local if args.url else send_endpoint
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
