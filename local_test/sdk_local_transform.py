"""Run a batch transform on the serving image through SageMaker Python SDK v3 local mode, offline.

The SDK's local transform job starts the image with docker compose (`serve`), reads its
GET /execution-parameters for what the job does not set, splits the input files as SageMaker
does (SplitType Line: whole lines; BatchStrategy SingleRecord or MultiRecord under
MaxPayloadInMB), posts them, and writes OUTPUT/<file>.out (AssembleWith Line: a newline after
each answer). No AWS account or network: dummy credentials, local folders.

    .venv-drivers/bin/python local_test/sdk_local_transform.py --model-dir DIR --input DIR \\
        --output DIR [--image IMAGE] [--port N] [--batch-strategy MultiRecord] [--env N=V]

Prints one JSON line: the job's BatchStrategy and the .out files written; exits non-zero if the
job fails.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from sdk_local_mode import offline_environment  # local_test/ is this script's sys.path[0]

from job_contract.images import local_image
from job_contract.media import JSONLINES

# Seconds the SDK waits for /ping to answer 200 (its default, 120 s, is short on a busy machine).
HEALTH_CHECK_TIMEOUT_S = 600


def local_session(port: int, root: Path) -> Any:
    """A LocalSession serving on ``port``, its files under ``root``."""
    from sagemaker.core.local import entities
    from sagemaker.core.local.local_session import LocalSession

    # The SDK reads local.health_check_timeout but its config schema refuses the key (3.27):
    # its module default is the one way to wait longer.
    entities.HEALTH_CHECK_TIMEOUT_LIMIT = HEALTH_CHECK_TIMEOUT_S
    session = LocalSession()
    config = {"local": {"local_code": True, "serving_port": port, "container_root": str(root)}}
    # the runtime client was built with the session's config: both must see the port
    session.config = session.sagemaker_runtime_client.config = config
    return session


def remove_left_behind(root: Path) -> None:
    """The SDK stops the serving container but leaves it (exited) behind, and its folder under
    ``root``: remove the containers docker compose started from there, then the folder."""
    label = '{{.ID}} {{.Label "com.docker.compose.project.working_dir"}}'
    rows = subprocess.run(["docker", "ps", "-a", "--format", label], capture_output=True,
                          text=True, check=False).stdout.splitlines()
    ids = [row.split()[0] for row in rows if f" {root}" in row]
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False)
    shutil.rmtree(root, ignore_errors=True)


def transform(session: Any, args: argparse.Namespace) -> dict[str, Any]:
    client = session.sagemaker_client
    client.create_model(ModelName="resnet50-local", PrimaryContainer={
        "Image": args.image, "ModelDataUrl": f"file://{Path(args.model_dir).resolve()}",
        "Environment": dict(pair.split("=", 1) for pair in args.env or [])})
    extra = {"BatchStrategy": args.batch_strategy} if args.batch_strategy else {}
    client.create_transform_job(
        TransformJobName="resnet50-local-transform", ModelName="resnet50-local",
        TransformInput={"DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": f"file://{Path(args.input).resolve()}"}},
            "ContentType": JSONLINES, "SplitType": "Line"},
        TransformOutput={"S3OutputPath": f"file://{Path(args.output).resolve()}",
                         "Accept": JSONLINES, "AssembleWith": "Line"},
        TransformResources={"InstanceType": "local", "InstanceCount": 1}, **extra)
    return client.describe_transform_job("resnet50-local-transform")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=local_image("serve"))
    parser.add_argument("--model-dir", required=True, help="an unpacked artifact")
    parser.add_argument("--input", required=True, help="a folder of JSON Lines files")
    parser.add_argument("--output", required=True)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--batch-strategy", choices=("SingleRecord", "MultiRecord"))
    parser.add_argument("--env", action="append", metavar="NAME=VALUE",
                        help="environment of the serving container; repeatable")
    args = parser.parse_args(argv)
    offline_environment()
    root = Path(tempfile.mkdtemp(prefix="sdk-local-transform-"))
    try:
        job = transform(local_session(args.port, root), args)
    finally:
        remove_left_behind(root)
    if job["TransformJobStatus"] != "Completed":
        print(f"transform job {job['TransformJobStatus']}", file=sys.stderr)
        return 1
    outputs = sorted(str(p.relative_to(args.output)) for p in Path(args.output).rglob("*.out"))
    print(json.dumps({"batch_strategy": job["BatchStrategy"], "outputs": outputs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
