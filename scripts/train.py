#!/usr/bin/env python3
"""Start, follow or analyse a SageMaker training job: `python scripts/train.py --help`.

The code is drivers/training_job.py; this file only launches it."""
from launch import run

if __name__ == "__main__":
    raise SystemExit(run("drivers.training_job"))
