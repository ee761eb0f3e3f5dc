"""Local tuning with the feature cache: 20 frozen-backbone trials vs one trial alone.

Target: a 20-trial search (trainable-layers=0, the default search space otherwise, median
pruning on) costs at most 2x one trial alone. Both runs start from an empty feature cache:
the single trial computes every backbone feature once; in the search, trial 1 does the same
and trials 2..20 read them back and only train the linear head. Both runs use the same sampler
seed, so the single trial is the search's first trial. Times are wall-clock seconds of
``drivers.local_tuning.main`` in this process (imports excluded, plot and best file included).
The single trial runs before and after the search (each with its own empty cache; their mean
is "one trial alone", so a change of load during the search counts on both sides), and the
search's own first trial is a second reference measured in the same window. On a shared,
loaded machine the two disagree, so the RESULT line takes the larger (worse) of the two ratios.

    .venv/bin/python bench/local_tuning_speed.py [--image-size 224] [--trials 20] \\
        [--data sample_data/photos5] [--weights auto]

``--weights auto``: imagenet when torchvision's weights are in the torch cache, else none
(random init; the backbone's cost is the same).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import container_train.main  # noqa: F401  (torch and the training code: imported once)
from container_train.model import imagenet_weights_path
from drivers import local_tuning as tune_local

REPO = Path(__file__).resolve().parent.parent

TARGET = 2.0


def search(data: Path, root: Path, trials: int, image_size: int, weights: str,
           seed: int) -> dict:
    argv = ["--data", str(data), "--output", str(root), "--best-out", str(root / "best.json"),
            "--max-jobs", str(trials), "--seed", str(seed),
            "--set", "trainable-layers=0", "--set", f"weights={weights}",
            "--set", f"image-size={image_size}", "--set", "num-workers=0"]
    start = time.perf_counter()
    rc = tune_local.main(argv, out=io.StringIO())
    seconds = time.perf_counter() - start
    if rc != 0:
        raise SystemExit(f"tune_local exited {rc}; see {root}")
    record = json.loads((root / "trials.json").read_text())
    computed = sum(int(m) for log in root.glob("trial-*/train.log")
                   for m in re.findall(r"(\d+) image-views computed", log.read_text()))
    states = [t["state"] for t in record["trials"]]
    return {"trials": len(states), "complete": states.count("complete"),
            "pruned": states.count("pruned"), "failed": states.count("fail"),
            "seconds": seconds, "computed": computed,
            "first_trial_s": record["trials"][0]["seconds"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO / "sample_data" / "photos5")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--weights", default="auto", help="auto, imagenet or none")
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    args = p.parse_args()
    weights = args.weights
    if weights == "auto":
        weights = "imagenet" if imagenet_weights_path() is not None else "none"
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="bench-tune-local-") as tmp:
        before = search(args.data, Path(tmp) / "one-before", 1, args.image_size, weights,
                        args.seed)
        loads.append(os.getloadavg()[0])
        many = search(args.data, Path(tmp) / "many", args.trials, args.image_size, weights,
                      args.seed)
        loads.append(os.getloadavg()[0])
        after = search(args.data, Path(tmp) / "one-after", 1, args.image_size, weights,
                       args.seed)
        loads.append(os.getloadavg()[0])
    one = (before["seconds"] + after["seconds"]) / 2
    ratio_alone = many["seconds"] / one
    ratio_own = many["seconds"] / many["first_trial_s"]
    ratio = max(ratio_alone, ratio_own)
    print(f"\nmachine: {platform.machine()}, {platform.system()}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}; 1-min load average at start/after each run: "
          f"{', '.join(f'{x:.1f}' for x in loads)}; data {args.data.name}, image-size "
          f"{args.image_size}, weights {weights}, trainable-layers=0, num-workers=0")
    print("| run | trials | completed | pruned | failed | image-views computed | seconds | "
          "s/trial |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in (("one trial, cold cache (before)", before),
                    (f"{args.trials} trials, one cache", many),
                    ("one trial, cold cache (after)", after)):
        print(f"| {name} | {r['trials']} | {r['complete']} | {r['pruned']} | {r['failed']} | "
              f"{r['computed']} | {r['seconds']:.1f} | {r['seconds'] / r['trials']:.1f} |")
    warm = (many["seconds"] - many["first_trial_s"]) / max(many["trials"] - 1, 1)
    print(f"\none trial alone: {one:.1f} s (mean of before and after); in the search: first "
          f"trial {many['first_trial_s']:.1f} s, later trials {warm:.1f} s each on average")
    print(f"ratio {args.trials} trials / one trial alone = {ratio_alone:.2f}; / the search's "
          f"own first trial = {ratio_own:.2f}; RESULT takes the larger")
    print(f"RESULT tune_local ratio={ratio:.2f} target<={TARGET:g} "
          f"pass={'true' if ratio <= TARGET else 'false'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
