"""What a tuning trial pays for the compiled serving variant: one training job, compile on vs off.

The job runs in this process the way a SageMaker trial runs in the image
(``container_train.main.run`` on ``JobConfig.from_values``: setup, fit, then the artifact with
its variants), at the demo's settings by default (local_test/test_dir/input/config/
hyperparameters.json: 2 epochs, 64 px, batch 16, seed 7). It runs compile=false, then
compile=true, then compile=false again (the mean of the two is "without", so a change of load
during the runs counts on both sides). int8 stays off in all three (its default).
The share is (with - without) / with: what skipping the compile saves of a trial.

    .venv/bin/python bench/trial_compile.py [--image-size 64] [--epochs 2] \\
        [--trainable-layers 0] [--weights auto] [--data sample_data/photos5]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from container_train.config import JobConfig
from container_train.main import run
from container_train.model import imagenet_weights_path

REPO = Path(__file__).resolve().parent.parent


def one_job(values: dict, data: Path, root: Path) -> float:
    """Wall-clock seconds of one whole training job (imports excluded); its log is dropped."""
    config = JobConfig.from_values(values, data_dir=data, model_dir=root / "model",
                                   output_data_dir=root / "output",
                                   feature_cache_dir=root / "feature-cache")
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        run(config)
    seconds = time.perf_counter() - start
    manifest = json.loads((root / "model" / "manifest.json").read_text())
    compiled = "compiled" in (manifest.get("variants") or {})
    print(f"compile={values['compile']}: {seconds:.1f} s (compiled variant written: "
          f"{compiled})", file=sys.stderr, flush=True)
    return seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO / "sample_data" / "photos5")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--trainable-layers", default="0")
    p.add_argument("--weights", default="auto", help="auto, imagenet or none")
    args = p.parse_args()
    weights = args.weights
    if weights == "auto":
        weights = "imagenet" if imagenet_weights_path() is not None else "none"
    base = {"epochs": args.epochs, "image-size": args.image_size, "batch-size": args.batch_size,
            "weights": weights, "trainable-layers": args.trainable_layers, "num-workers": 0,
            "log-interval": 2, "seed": 7, "int8": False}
    loads = [os.getloadavg()[0]]
    times = {}
    with tempfile.TemporaryDirectory(prefix="bench-trial-compile-") as tmp:
        for key, compile_ in (("off-before", False), ("on", True), ("off-after", False)):
            times[key] = one_job({**base, "compile": compile_}, args.data, Path(tmp) / key)
            loads.append(os.getloadavg()[0])
    without = (times["off-before"] + times["off-after"]) / 2
    share = (times["on"] - without) / times["on"]
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, python "
          f"{platform.python_version()}; 1-min load average at start/after each run: "
          f"{', '.join(f'{x:.1f}' for x in loads)}; data {args.data.name}, image-size "
          f"{args.image_size}, epochs {args.epochs}, batch-size {args.batch_size}, weights "
          f"{weights}, trainable-layers {args.trainable_layers}, num-workers 0")
    print("| run | seconds |\n|---|---|")
    for key, label in (("off-before", "compile=false (before)"), ("on", "compile=true"),
                       ("off-after", "compile=false (after)")):
        print(f"| {label} | {times[key]:.1f} |")
    print(f"\ncompile=false: {without:.1f} s (mean); compile=true: {times['on']:.1f} s; the "
          f"compiled variant is {times['on'] - without:.1f} s, {share:.0%} of the trial")
    print(f"RESULT trial_compile with_s={times['on']:.1f} without_s={without:.1f} "
          f"share={share:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
