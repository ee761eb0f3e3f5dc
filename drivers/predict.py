#!/usr/bin/env python3
"""Send images to a SageMaker endpoint or a local server and print the top-k classes.

    python scripts/predict.py --endpoint resnet-serve-261127-2040 cat.jpg dog.png
    python scripts/predict.py --url http://localhost:8080 --top-k 3 sample.jpg

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

from drivers.aws_settings import SettingsError, add_profile_argument
from drivers.requests_log import to_jsonable
from job_contract.media import sniff_image

ACCEPT = "application/json"
CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"


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
    p.add_argument("--region", help="AWS region (env AWS_REGION / AWS_DEFAULT_REGION; else "
                                    "the profile's region)")
    add_profile_argument(p)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--content-type", help="override the content type of every file")
    p.add_argument("--json", action="store_true", help="print the raw responses as JSON")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request (--url)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the exact requests as JSON on stdout and send nothing")
    return p


def invocations_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError(f"--url must be http(s)://HOST[:PORT][/PATH], got {url!r}")
    if parts.path in ("", "/"):
        parts = parts._replace(path="/invocations")
    return urllib.parse.urlunsplit(parts)


class HttpError(Exception):
    pass


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.top_k < 1:
            raise SettingsError("--top-k must be at least 1")
        payloads = []
        for path in args.files:
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise SettingsError(f"cannot read {path}: {exc.strerror}") from None
            payloads.append((path, data, args.content_type or content_type_of(path, data)))
        attributes = f"top_k={args.top_k}"
        results: list[tuple[str, dict[str, Any]]] = []
        if args.url:
            url = invocations_url(args.url)
            requests = [{"url": url, "method": "POST",
                         "headers": {"Content-Type": ctype, "Accept": ACCEPT,
                                     CUSTOM_ATTRIBUTES_HEADER: attributes},
                         "body": data} for _, data, ctype in payloads]
            if args.dry_run:
                print(json.dumps(to_jsonable(requests), indent=2))
                return 0
            for (path, _, _), request in zip(payloads, requests, strict=True):
                results.append((path.name, post_local(url, request["body"], request["headers"],
                                                      args.timeout)))
        else:
            from drivers.aws_settings import resolve
            from drivers.common import open_context

            ctx = open_context(resolve(args, ["region"]), args.dry_run)
            runtime = ctx.client("sagemaker-runtime")
            for path, data, ctype in payloads:
                response = runtime.invoke_endpoint(
                    EndpointName=args.endpoint, ContentType=ctype, Accept=ACCEPT,
                    CustomAttributes=attributes, Body=data)
                if not args.dry_run:
                    results.append((path.name, json.loads(response["Body"].read())))
            if args.dry_run:
                print(ctx.recorder.dump())
                ctx.guard.uninstall()
                return 0
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except HttpError as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if args.url:
            raise
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            print(f"failed: {err.get('Code')}: {err.get('Message')}", file=sys.stderr)
            return 1
        if isinstance(exc, BotoCoreError):
            print(f"failed: {exc}", file=sys.stderr)
            return 1
        raise
    if args.json:
        print(json.dumps({name: response for name, response in results}, indent=2))
    else:
        print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
