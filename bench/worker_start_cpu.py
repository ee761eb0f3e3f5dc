"""CPU seconds (user + sys of this process) of a serving worker's start, step by step: import
torch, import what an MMS worker imports, then ``model_fn`` on an artifact. CPU time, not wall
time, so that it can be compared on a machine shared with other jobs.

    .venv/bin/python bench/worker_start_cpu.py MODEL_DIR [--graph auto|compiled|frozen|eager]

``--graph eager`` is what serve's artifact check ran before it loaded the compiled variant.
"""

from __future__ import annotations

import argparse
import os
import time


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--graph", default="auto")
    args = parser.parse_args()
    os.environ.update({"SERVE_GRAPH": args.graph, "SERVE_THREADS_PER_WORKER": "1",
                       "SAGEMAKER_MODEL_SERVER_WORKERS": "1"})
    start, wall = cpu_seconds(), time.monotonic()
    import torch  # noqa: F401

    after_torch = cpu_seconds()
    import container_serve.handler_service  # noqa: F401
    from container_serve import inference

    after_imports = cpu_seconds()
    served = inference.model_fn(args.model_dir)
    done = cpu_seconds()
    print(f"{args.graph} ({served.graph} graph): torch {after_torch - start:.2f}, other imports "
          f"{after_imports - after_torch:.2f}, model_fn {done - after_imports:.2f}, total "
          f"{done - start:.2f} cpu-s; wall {time.monotonic() - wall:.1f} s")


if __name__ == "__main__":
    main()
