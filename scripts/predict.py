#!/usr/bin/env python3
"""Classify photos with an endpoint or a local server: `python scripts/predict.py --help`.

The code is drivers/predict.py; this file only launches it."""
from launch import run

if __name__ == "__main__":
    raise SystemExit(run("drivers.predict"))
