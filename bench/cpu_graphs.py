"""Which graph is fastest on this CPU: batch-1 forward of every graph serving can run.

Issue 20 part 6: SageMaker CPU instances span AVX2-only, AVX-512 (+VNNI) and AMX Xeons, Zen 4
and Graviton, and the compiled package serving loads is chosen per CPU
(``model_artifact.compiled.TARGETS``). This times, in one process and one after the other on
the same 224 px ResNet50 (random init, as serving_speed.py's artifact: no agreement is measured
here, see int8_agreement.py for that on a trained network), at serving's one thread:

- eager fp32 (what the seed-style handler runs), and the frozen TorchScript graph;
- each compiled package this CPU runs: x86-64-v3, x86-64-v4 (AVX-512), bf16 (AMX);
- the int8 package (pt2e, calibrated on the sample photos).

    .venv/bin/python bench/cpu_graphs.py            # about 5 min on 2 vCPUs

Prints a table (median ms over ``--runs``, ratio to eager and to the v3 package) and
``RESULT cpu_graphs best=<graph> best_vs_eager=<x>``; no target: it says which graph wins.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from model_artifact.compiled import (
    SERVING_THREADS,
    TARGETS,
    batch1_ms,
    compile_package,
    load_fresh_package,
    runs_here,
)
from model_artifact.network import build_model
from model_artifact.preprocess import EvalPreprocessing, image_batches

REPO = Path(__file__).resolve().parent.parent
PHOTOS = REPO / "sample_data" / "photos5"
SIZE = 224


def _int8(model: torch.nn.Module, work: Path):
    from model_artifact.quantize import compile_int8, quantize_int8

    pre = EvalPreprocessing.for_image_size(SIZE)
    photos = sorted((PHOTOS / "train").glob("*/*.jpg"))[:64]
    quantized = quantize_int8(model, image_batches(photos, pre, batch_size=16))
    return load_fresh_package(compile_int8(quantized, SIZE, work / "int8.pt2"))


def graphs(work: Path) -> dict[str, object]:
    """Every graph this CPU runs, built from one model; compile times are logged."""
    torch.manual_seed(0)
    model = build_model("resnet50", 5).eval().to(memory_format=torch.channels_last)
    example = torch.zeros(1, 3, SIZE, SIZE).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        frozen = torch.jit.optimize_for_inference(torch.jit.trace(model, example))
    built: dict[str, object] = {"eager fp32": model, "frozen fp32": frozen}
    capability = torch.backends.cpu.get_cpu_capability()
    for target in reversed(TARGETS):  # v3 first: the ratio's baseline
        if not runs_here(target, capability):
            print(f"cpu_graphs: {target.variant} not built: this CPU ({capability}) does not "
                  "run it", flush=True)
            continue
        start = time.perf_counter()
        path = compile_package(model, SIZE, work / target.file, target=target)
        built[target.variant] = load_fresh_package(path, target)
        print(f"cpu_graphs: {target.variant} compiled in {time.perf_counter() - start:.0f} s",
              flush=True)
    start = time.perf_counter()
    built["int8"] = _int8(copy.deepcopy(model), work)  # quantize_int8 changes the layout
    print(f"cpu_graphs: int8 quantized and compiled in {time.perf_counter() - start:.0f} s",
          flush=True)
    return built


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3,
                        help="each graph timed once per round, rounds interleaved")
    args = parser.parse_args()
    torch.set_num_threads(SERVING_THREADS)
    with tempfile.TemporaryDirectory(prefix="cpu-graphs-") as scratch:
        built = graphs(Path(scratch))
        torch.set_num_threads(SERVING_THREADS)
        times: dict[str, list[float]] = {name: [] for name in built}
        for _ in range(args.rounds):  # interleaved: a load change hits every graph alike
            for name, network in built.items():
                times[name].append(batch1_ms(network, SIZE, args.runs))
    ms = {name: statistics.median(values) for name, values in times.items()}
    eager, v3 = ms["eager fp32"], ms.get("compiled", float("nan"))
    print(f"cpu_graphs: {torch.backends.cpu.get_cpu_capability()}, "
          f"{SERVING_THREADS} thread, {SIZE} px, batch 1, median of {args.rounds} rounds x "
          f"{args.runs} runs")
    print("| graph | ms | vs eager fp32 | vs compiled (x86-64-v3) |")
    print("|---|---|---|---|")
    for name, value in ms.items():
        print(f"| {name} | {value:.1f} | {eager / value:.2f}x | {v3 / value:.2f}x |")
    best = min((n for n in ms if n != "int8"), key=ms.__getitem__)  # int8 is opt-in
    print(f"RESULT cpu_graphs best={best.replace(' ', '_')} best_ms={ms[best]:.1f} "
          f"best_vs_eager={eager / ms[best]:.2f} int8_vs_eager={eager / ms['int8']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
