#!/usr/bin/env python3
"""Hyperparameter tuning on SageMaker, or --local: `python scripts/tune.py --help`.

The code is drivers/tuning_job.py; this file only launches it."""
from launch import run

if __name__ == "__main__":
    raise SystemExit(run("drivers.tuning_job"))
