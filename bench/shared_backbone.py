"""Shared-backbone bench: 20 frozen-backbone models in one multi-model worker.

Writes 20 ResNet50 artifacts with the project's writer (model_artifact.writer.write_artifact),
224 px, one random-init backbone (same seed: what 20 trainable-layers=0 runs from the same
starting weights write) and 20 different heads (5 to 133 classes, each its own random head),
then loads them into one ``container_serve.resident_models.ResidentModels`` (SERVE_GRAPH
frozen, one thread), as a multi-model worker does.

    .venv/bin/python bench/shared_backbone.py            # 20 models
    .venv/bin/python bench/shared_backbone.py --models 5 # a smoke run

Measured (each memory figure in its own fresh process, so nothing else is resident):
- memory: resident set size (VmRSS) after the loads minus VmRSS just before them, after
  gc and malloc_trim; 20 models vs one model in ResidentModels, and vs one model served
  alone (inference.load_served, the single-model path). Target: 20 models <= 1.3 x one.
- head load: wall time of ResidentModels.load for models 2..N (backbone resident); the
  median. Target <= 200 ms.
- agreement: max |probability difference| between each model in ResidentModels and the same
  artifact served alone (load_served + predict_fn), on the sample test and valid photos.
  Target <= 1e-5.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PHOTOS = REPO / "sample_data" / "photos5"
MEMORY_TARGET, HEAD_MS_TARGET, PROBABILITY_TARGET = 1.3, 200.0, 1e-5


def rss_bytes() -> int:
    """VmRSS after a full collection and giving freed heap back to the system."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def write_models(root: Path, count: int) -> list[Path]:
    import torch

    from model_artifact.manifest import Manifest
    from model_artifact.network import build_model
    from model_artifact.preprocess import EvalPreprocessing
    from model_artifact.writer import write_artifact

    folders = []
    for i in range(count):
        classes = 5 + (i * 37) % 129  # 5..133
        torch.manual_seed(0)  # the backbone: the same starting weights for every model
        model = build_model("resnet50", classes).eval()
        torch.manual_seed(1000 + i)  # the head: this model's own
        torch.nn.init.normal_(model.fc.weight, std=0.05)
        folder = root / f"model{i:02d}"
        folder.mkdir(parents=True)
        manifest = Manifest(architecture="resnet50",
                            class_names=tuple(f"class{j}" for j in range(classes)),
                            preprocessing=EvalPreprocessing.for_image_size(224))
        write_artifact(folder, model, manifest)
        folders.append(folder)
    return folders


def settings():
    from container_serve.settings import ServeSettings

    return ServeSettings(graph="frozen", threads_per_worker=1)


def phase_resident(folders: list[Path]) -> dict:
    """Load every folder into one ResidentModels: RSS growth after the first and after all,
    and each load's time."""
    from container_serve.resident_models import ResidentModels

    resident = ResidentModels(settings())
    before = rss_bytes()
    times = []
    for i, folder in enumerate(folders):
        start = time.perf_counter()
        resident.load(f"m{i}", str(folder))
        times.append(time.perf_counter() - start)
        if i == 0:
            first = rss_bytes() - before
    return {"first_bytes": first, "all_bytes": rss_bytes() - before, "load_s": times,
            "backbones": resident.backbone_users()}


def phase_single(folders: list[Path]) -> dict:
    """One model served alone, as single-model serving builds it."""
    from container_serve.inference import load_served

    before = rss_bytes()
    served = load_served(str(folders[0]), settings())
    used = rss_bytes() - before
    del served
    return {"single_bytes": used}


def phase_agreement(folders: list[Path]) -> dict:
    """Max |probability difference|, every model in ResidentModels vs the same artifact served
    alone, on the sample photos (one single-model server at a time)."""
    from container_serve.inference import load_served, predict_fn
    from container_serve.resident_models import ResidentModels

    photos = [p.read_bytes() for p in sorted((PHOTOS / "test").glob("*/*.jpg"))[:8]]
    resident = ResidentModels(settings())
    worst = 0.0
    for i, folder in enumerate(folders):
        shared = predict_fn(photos, resident.load(f"m{i}", str(folder))).probabilities
        alone = predict_fn(photos, load_served(str(folder), settings())).probabilities
        worst = max(worst, float((shared - alone).abs().max()))
    return {"max_difference": worst, "images": len(photos)}


PHASES = {"resident": phase_resident, "single": phase_single, "agreement": phase_agreement}


def run_phase(name: str, root: Path) -> dict:
    """A phase in a fresh process: its memory figures see nothing but its own loads."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "bench.shared_backbone", "--phase", name,
                           "--root", str(root)], cwd=REPO, env=env, capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"phase {name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(count: int, resident: dict, single: dict, agreement: dict) -> bool:
    mib = 1 << 20
    heads_ms = [t * 1000 for t in resident["load_s"][1:]]
    head_ms = statistics.median(heads_ms) if heads_ms else float("nan")
    ratio = resident["all_bytes"] / resident["first_bytes"]
    ratio_single = resident["all_bytes"] / single["single_bytes"]
    rows = [("RSS growth, 1 model in ResidentModels", f"{resident['first_bytes'] / mib:.0f} MiB"),
            ("RSS growth, 1 model served alone (load_served)",
             f"{single['single_bytes'] / mib:.0f} MiB"),
            (f"RSS growth, {count} models in ResidentModels",
             f"{resident['all_bytes'] / mib:.0f} MiB"),
            (f"{count} models / 1 model (ResidentModels; alone)",
             f"{ratio:.3f}; {ratio_single:.3f}"),
            ("first load (whole model, backbone frozen)", f"{resident['load_s'][0] * 1000:.0f} ms"),
            ("head load median (min, max)",
             f"{head_ms:.1f} ms ({min(heads_ms, default=0):.1f}, {max(heads_ms, default=0):.1f})"),
            ("shared backbones resident (users)", str(list(resident["backbones"].values()))),
            (f"max |p shared - p alone| ({agreement['images']} photos x {count} models)",
             f"{agreement['max_difference']:.2e}")]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    ok = (max(ratio, ratio_single) <= MEMORY_TARGET and head_ms <= HEAD_MS_TARGET
          and agreement["max_difference"] <= PROBABILITY_TARGET)
    print(f"RESULT shared_backbone memory_ratio={max(ratio, ratio_single):.3f} "
          f"target<={MEMORY_TARGET} head_load_ms={head_ms:.1f} target<={HEAD_MS_TARGET:g} "
          f"max_probability_difference={agreement['max_difference']:.2e} "
          f"target<={PROBABILITY_TARGET:g} pass={str(ok).lower()}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        folders = sorted(p for p in args.root.iterdir() if p.is_dir())
        print(json.dumps(PHASES[args.phase](folders)))
        return 0
    with tempfile.TemporaryDirectory(prefix="shared_backbone_") as tmp:
        root = Path(tmp)
        write_models(root, args.models)
        print(f"[bench] {args.models} artifacts written to {root}", flush=True)
        resident = run_phase("resident", root)
        single = run_phase("single", root)
        agreement = run_phase("agreement", root)
    return 0 if report(args.models, resident, single, agreement) else 1


if __name__ == "__main__":
    sys.exit(main())
