"""Step-time cost of the SageMaker Debugger hook: no hook vs a losses-only hook.

Runs the real training step (container_train.engine.train_one_epoch) on a ResNet50 (every
layer training, so every parameter carries a gradient hook: the worst case) with in-memory
synthetic batches (no data loading in the measurement). The configurations take turns step by
step, so a shared machine's load drifts hit them alike; the first step of each is a warm-up and
not counted. The hook is built the way a job builds it: container_train.debugger from a
debughookconfig.json shaped like SageMaker's, losses saved at every step.

Step time is measured twice: the loop's own wall-clock compute time (on_step_end) and the CPU
time of this process over the step, with one torch thread by default. On a CPU the RESULT ratio
uses CPU time, which on a shared machine does not count the time other processes took; on a
GPU it uses wall-clock time.

    .venv/bin/python bench/debug_hook_overhead.py \
        [--steps 30 --image-size 32 --batch-size 8 --threads 1 --with-tensors]

Prints a table (median step time per configuration, ratio vs no hook) and ends with
``RESULT debug_hook_overhead ratio=<losses-only / none> target<=1.05 pass=<true|false>``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from container_train.debugger import DebuggerCallback
from container_train.engine import Callback, train_one_epoch

TARGET = 1.05


class StepTimes(Callback):
    """Wall time (the loop's compute_seconds) and CPU time of this process per step."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []
        self._cpu_start = 0.0

    def on_mode(self, mode):
        self._cpu_start = time.process_time()

    def on_step_end(self, mode, step, loss, batch_size, data_seconds, compute_seconds):
        self.cpu_seconds.append(time.process_time() - self._cpu_start)
        self.seconds.append(compute_seconds)


def hook_config(out_dir: Path, collections: dict[str, int]) -> dict:
    """A debughookconfig.json as SageMaker writes it (string values)."""
    return {
        "LocalPath": str(out_dir),
        "S3OutputPath": "s3://example-bucket/bench/tensors",
        "HookParameters": {"save_interval": "100"},
        "CollectionConfigurations": [
            {"CollectionName": name, "CollectionParameters": {"save_interval": str(every)}}
            for name, every in collections.items()
        ],
    }


def make_model(num_classes: int, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None, num_classes=num_classes)
    return model.to(device, memory_format=torch.channels_last)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="measured steps per configuration")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: CPU time per step is the step's own work)")
    parser.add_argument("--with-tensors", action="store_true",
                        help="also time losses + weights + gradients every 10 steps (info)")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(args.threads)
    classes = 5
    n = args.batch_size  # one batch per pass: the configurations alternate every step
    data = TensorDataset(torch.randn(n, 3, args.image_size, args.image_size),
                         torch.randint(0, classes, (n,)))
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=False)

    configs: dict[str, dict[str, int] | None] = {"no hook": None, "losses only": {"losses": 1}}
    if args.with_tensors:
        configs["losses+weights+gradients/10"] = {"losses": 1, "weights": 10, "gradients": 10}

    workdir = Path(tempfile.mkdtemp(prefix="hook-bench-"))
    runs = {}
    for name, collections in configs.items():
        model, criterion = make_model(classes, device), nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        timer = StepTimes()
        callbacks: list[Callback] = []
        if collections is not None:
            path = workdir / f"{len(runs)}.json"
            path.write_text(json.dumps(hook_config(workdir / f"tensors{len(runs)}",
                                                   collections)))
            callbacks.append(DebuggerCallback(path))
        callbacks.append(timer)
        for cb in callbacks:
            cb.on_train_begin(model, criterion)
        runs[name] = (model, criterion, optimizer, callbacks, timer)

    started = time.perf_counter()
    for step in range(args.steps + 1):  # step 0: warm-up, not counted
        for model, criterion, optimizer, callbacks, _ in runs.values():
            train_one_epoch(model, criterion, optimizer, loader, device, epoch=step + 1,
                            epochs=args.steps + 1, log_interval=10**9, callbacks=callbacks)
    elapsed = time.perf_counter() - started
    for run in runs.values():
        del run[4].seconds[0], run[4].cpu_seconds[0]
        for cb in run[3]:
            cb.on_train_end()
    shutil.rmtree(workdir, ignore_errors=True)

    def med(name: str, cpu: bool) -> float:
        timer = runs[name][4]
        return statistics.median(timer.cpu_seconds if cpu else timer.seconds)

    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"cpus={os.cpu_count()} python={platform.python_version()} "
          f"image={args.image_size}px batch={args.batch_size} steps={args.steps} per "
          f"configuration, alternating (+1 warm-up each) wall={elapsed:.0f}s "
          f"load={os.getloadavg()[0]:.1f}")
    print(f"| {'configuration':<28} | {'steps':>5} | {'median CPU ms':>13} | {'ratio':>5} "
          f"| {'median wall ms':>14} | {'ratio':>5} |")
    print(f"|{'-' * 30}|{'-' * 7}|{'-' * 15}|{'-' * 7}|{'-' * 16}|{'-' * 7}|")
    for name, run in runs.items():
        print(f"| {name:<28} | {len(run[4].seconds):>5} | {med(name, True) * 1000:>13.1f} | "
              f"{med(name, True) / med('no hook', True):>5.3f} | "
              f"{med(name, False) * 1000:>14.1f} | "
              f"{med(name, False) / med('no hook', False):>5.3f} |")
    added = statistics.median(h - b for h, b in zip(runs["losses only"][4].cpu_seconds,
                                                     runs["no hook"][4].cpu_seconds,
                                                     strict=True))
    print(f"losses only adds a median {added * 1000:+.1f} ms of CPU per step")
    # On a CPU, CPU time: on a shared machine, wall time also counts the time other processes
    # ran. On a GPU, wall time (the CPU only launches kernels and waits).
    on_cpu = device.type == "cpu"
    ratio = med("losses only", on_cpu) / med("no hook", on_cpu)
    print(f"RESULT debug_hook_overhead ratio={ratio:.3f} target<={TARGET} "
          f"pass={'true' if ratio <= TARGET else 'false'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
