#!/usr/bin/env python3
"""Deploy a trained model to a SageMaker endpoint: `python scripts/deploy.py --help`.

The code is drivers/deploy.py; this file only launches it."""
from launch import run

if __name__ == "__main__":
    raise SystemExit(run("drivers.deploy"))
