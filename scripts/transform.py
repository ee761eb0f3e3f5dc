#!/usr/bin/env python3
"""Classify an S3 prefix with a SageMaker batch transform job: `python scripts/transform.py --help`.

The code is drivers/transform.py; this file only launches it."""
from launch import run

if __name__ == "__main__":
    raise SystemExit(run("drivers.transform"))
