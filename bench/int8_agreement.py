"""int8 vs fp32 on a trained network: top-1 agreement and accuracy on a whole test split.

The int8 variant is built exactly as the training job builds it
(``model_artifact.quantize.write_int8_variant``: pt2e quantization with the x86 Inductor
quantizer, calibrated on training images, compiled with AOTInductor) into a copy of a trained
artifact, then both networks score every test image through serving's preprocessing, with
serving's one thread. Goal (issue 20): agreement >= 99.5%. One row per set of modules left
fp32 (``--fp32-modules``; default: none, and the job's ``quantize.FP32_MODULES``), each built
from the same artifact and scored against the same fp32 logits. On a CPU with AMX one more
row: the bf16 package (``compiled.AMX_BF16``, what serving runs there by default when the
training job kept it), scored the same way against the same bar.

    .venv/bin/python bench/int8_agreement.py                      # the reference network
    .venv/bin/python bench/int8_agreement.py --model-dir DIR --test-dir DIR --train-dir DIR

Without --model-dir it uses bench/reference_network.py's network (training it when missing).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.reference_network import IMAGE_SUFFIXES, add_arguments, reference_network, test_images
from model_artifact.compiled import (
    AMX_BF16,
    SERVING_THREADS,
    compile_package,
    has_amx,
    load_fresh_package,
)
from model_artifact.network import load_artifact
from model_artifact.preprocess import image_batches
from model_artifact.quantize import FP32_MODULES, load_int8, write_int8_variant

TARGET_AGREEMENT = 0.995
CALIBRATION_IMAGES = 64  # the job's INT8_CALIBRATION_IMAGES order of magnitude


def _calibration(train_dir: Path, count: int) -> list[Path]:
    paths = sorted(p for p in train_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return random.Random(0).sample(paths, min(count, len(paths)))


@torch.inference_mode()
def _logits(network: torch.nn.Module, paths: list[Path], pre) -> torch.Tensor:
    return torch.cat([network(batch.contiguous(memory_format=torch.channels_last)).float()
                      for batch in image_batches(paths, pre, batch_size=64)])


def _build(model_dir: Path, work: Path, train_dir: Path, calibration_images: int,
           fp32_modules: tuple[str, ...]) -> tuple[torch.nn.Module, float]:
    """A fresh copy of ``model_dir`` in ``work`` with its int8 variant: (int8 graph, seconds)."""
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(model_dir, work)
    model, manifest = load_artifact(work)
    start = time.perf_counter()
    manifest = write_int8_variant(work, model, manifest,
                                  _calibration(train_dir, calibration_images),
                                  fp32_modules=fp32_modules)
    return load_int8(work, manifest), time.perf_counter() - start


def _bf16_package(model: torch.nn.Module, crop_size: int, work: Path
                  ) -> tuple[torch.nn.Module, float]:
    """The AMX bf16 package of ``model``, compiled as the training job compiles it."""
    start = time.perf_counter()
    path = compile_package(model, crop_size, work / AMX_BF16.file, target=AMX_BF16)
    return load_fresh_package(path, AMX_BF16), time.perf_counter() - start


def measure(model_dir: Path, test_dir: Path, train_dir: Path,
            calibration_images: int = CALIBRATION_IMAGES,
            configs: tuple[tuple[str, ...], ...] = ((), FP32_MODULES)) -> dict:
    """Score fp32 and, for each tuple of modules kept fp32 in ``configs``, an int8 variant
    built into a copy of ``model_dir``, on every image of ``test_dir``."""
    model, manifest = load_artifact(model_dir)
    paths, labels = test_images(test_dir, tuple(manifest.class_names))
    pre = manifest.preprocessing
    torch.set_num_threads(SERVING_THREADS)
    fp32 = _logits(model.to(memory_format=torch.channels_last).eval(), paths, pre)
    rows = []
    with tempfile.TemporaryDirectory(prefix="int8-bench-") as scratch:
        for fp32_modules in configs:
            int8_graph, seconds = _build(model_dir, Path(scratch) / "model", train_dir,
                                         calibration_images, fp32_modules)
            torch.set_num_threads(SERVING_THREADS)
            int8 = _logits(int8_graph, paths, pre)
            rows.append({"fp32_modules": fp32_modules, "build_s": seconds,
                         "agreement": float((fp32.argmax(1) == int8.argmax(1)).double().mean()),
                         "accuracy": float((int8.argmax(1) == labels).double().mean()),
                         "max_diff": float((fp32 - int8).abs().max()), "variant": "int8"})
        if has_amx():
            bf16_graph, seconds = _bf16_package(model, pre.crop_size, Path(scratch))
            torch.set_num_threads(SERVING_THREADS)
            bf16 = _logits(bf16_graph, paths, pre)
            rows.append({"fp32_modules": (), "build_s": seconds, "variant": "bf16",
                         "agreement": float((fp32.argmax(1) == bf16.argmax(1)).double().mean()),
                         "accuracy": float((bf16.argmax(1) == labels).double().mean()),
                         "max_diff": float((fp32 - bf16).abs().max())})
    return {"images": len(paths), "fp32_acc": float((fp32.argmax(1) == labels).double().mean()),
            "rows": rows}


def _modules(text: str) -> tuple[str, ...]:
    return tuple(name for name in text.split(",") if name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--model-dir", type=Path, help="a trained artifact (default: the "
                        "reference network)")
    parser.add_argument("--test-dir", type=Path, help="test images, <class>/<image>")
    parser.add_argument("--train-dir", type=Path, help="calibration images, <class>/<image>")
    parser.add_argument("--calibration-images", type=int, default=CALIBRATION_IMAGES)
    parser.add_argument("--fp32-modules", type=_modules, action="append",
                        help="modules left fp32, comma-separated ('' = none); repeat for more "
                             f"rows (default: none, and the job's {','.join(FP32_MODULES)})")
    args = parser.parse_args()
    if args.model_dir is None:
        reference = reference_network(args)
        args.model_dir, args.test_dir, args.train_dir = (reference.model_dir,
                                                         reference.test_dir, reference.train_dir)
    if args.test_dir is None or args.train_dir is None:
        parser.error("--model-dir needs --test-dir and --train-dir")
    configs = tuple(args.fp32_modules or ((), FP32_MODULES))
    result = measure(args.model_dir, args.test_dir, args.train_dir, args.calibration_images,
                     configs)
    print(f"int8_agreement: {args.model_dir}, {result['images']} test images, fp32 accuracy "
          f"{result['fp32_acc']:.4f}, int8 calibrated on {args.calibration_images} training "
          f"images, {SERVING_THREADS} thread")
    print("| variant | modules kept fp32 | top-1 agreement with fp32 | accuracy (delta) | "
          "largest logit difference | build s |")
    print("|---|---|---|---|---|---|")
    for row in result["rows"]:
        print(f"| {row['variant']} | {','.join(row['fp32_modules']) or 'none'} | "
              f"{row['agreement']:.4f} | "
              f"{row['accuracy']:.4f} ({row['accuracy'] - result['fp32_acc']:+.4f}) | "
              f"{row['max_diff']:.3f} | {row['build_s']:.0f} |")
    int8_rows = [r for r in result["rows"] if r["variant"] == "int8"]
    job = next((r for r in int8_rows if r["fp32_modules"] == FP32_MODULES), int8_rows[-1])
    ok = job["agreement"] >= TARGET_AGREEMENT
    print(f"RESULT int8_agreement agreement={job['agreement']:.4f} "
          f"fp32_modules={','.join(job['fp32_modules']) or 'none'} "
          f"accuracy_delta={job['accuracy'] - result['fp32_acc']:+.4f} "
          f"images={result['images']} target>={TARGET_AGREEMENT} pass={str(ok).lower()}")
    for row in (r for r in result["rows"] if r["variant"] == "bf16"):
        print(f"RESULT bf16_agreement agreement={row['agreement']:.4f} "
              f"accuracy_delta={row['accuracy'] - result['fp32_acc']:+.4f} "
              f"images={result['images']} target>={TARGET_AGREEMENT} "
              f"pass={str(row['agreement'] >= TARGET_AGREEMENT).lower()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
