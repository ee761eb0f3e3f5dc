"""Train the training image through SageMaker Python SDK v3 local mode, offline.

``ModelTrainer(training_mode=Mode.LOCAL_CONTAINER)`` writes /opt/ml/input/config/*.json the way
SageMaker does, starts the image with docker compose (with no `train` argument: the image must
train by default) and copies the model and output back. No AWS account or network is needed:
the credentials are dummies, role validation and telemetry are off, the data is a local folder.

    .venv-drivers/bin/python local_test/sdk_local_mode.py [--image IMAGE] [--data DIR] [--root DIR]

Prints the artifact directory; exits non-zero if the job or its artifact is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from job_contract.images import local_image

REPO = Path(__file__).resolve().parent.parent
TINY_HPS = {"epochs": 1, "image-size": 64, "batch-size": 16, "weights": "none",
            "num-workers": 0, "log-interval": 2, "seed": 7}


def offline_environment() -> None:
    """Dummy credentials and region; no IAM role check, no telemetry call-outs."""
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1", "SAGEMAKER_VALIDATE_ROLE": "false",
        "SAGEMAKER_TELEMETRY_OPT_OUT": "true",  # harmless where the SDK does not read it
    }.items():
        os.environ.setdefault(key, value)
    os.environ.pop("AWS_PROFILE", None)


def compose_down(root: Path) -> None:
    """The SDK leaves the exited job container behind; remove it (and its network if unused)."""
    compose_file = root / "docker-compose.yaml"
    if not compose_file.is_file():
        return
    if shutil.which("docker-compose"):
        cmd = ["docker-compose"]
    else:
        cmd = ["docker", "compose"]
    subprocess.run([*cmd, "-f", str(compose_file), "down", "--remove-orphans"],
                   capture_output=True, check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=local_image("train"))
    parser.add_argument("--data", default=str(REPO / "sample_data" / "photos5"),
                        help="one channel 'training' holding train/ valid/ test/")
    parser.add_argument("--root", default=None, help="local_container_root (default: a temp dir)")
    args = parser.parse_args(argv)
    offline_environment()

    from sagemaker.core.training.configs import Compute, InputData
    from sagemaker.train.model_trainer import Mode, ModelTrainer

    root = Path(args.root or tempfile.mkdtemp(prefix="sdk-local-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    trainer = ModelTrainer(
        training_mode=Mode.LOCAL_CONTAINER,
        training_image=args.image,
        role="arn:aws:iam::111111111111:role/LocalModeDummyRole",
        base_job_name="resnet50-local",
        compute=Compute(instance_type="local_cpu", instance_count=1),
        hyperparameters=TINY_HPS,
        local_container_root=str(root),
    )
    try:
        trainer.train(input_data_config=[InputData(channel_name="training",
                                                   data_source=str(Path(args.data).resolve()))],
                      wait=True)
    finally:
        compose_down(root)

    # The SDK leaves model.tar.gz (as SageMaker uploads it) and output.tar.gz under root.
    tars = sorted(root.rglob("model.tar.gz"))
    if not tars:
        print(f"no model.tar.gz under {root}: {sorted(p.name for p in root.rglob('*'))[:40]}",
              file=sys.stderr)
        return 1
    with tarfile.open(tars[0]) as tar:
        names = tar.getnames()
        member = tar.extractfile("manifest.json") if "manifest.json" in names else None
        manifest = json.load(member) if member else None
    if not manifest or "model.pt" not in names:
        print(f"{tars[0]} lacks model.pt/manifest.json: {names}", file=sys.stderr)
        return 1
    print(json.dumps({"model_tar": str(tars[0]), "members": sorted(names),
                      "class_names": manifest["class_names"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
