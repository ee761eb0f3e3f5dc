"""int8 vs fp32 on a trained network: top-1 agreement and accuracy on a whole test split.

The int8 variant is built exactly as the training job builds it
(``model_artifact.quantize.write_int8_variant``: pt2e quantization with the x86 Inductor
quantizer, calibrated on training images, compiled with AOTInductor) into a copy of a trained
artifact, then both networks score every test image through serving's preprocessing, with
serving's one thread. Goal (issue 20): agreement >= 99.5%.

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
from model_artifact.compiled import SERVING_THREADS
from model_artifact.manifest import INT8
from model_artifact.network import load_artifact
from model_artifact.preprocess import image_batches
from model_artifact.quantize import load_int8, write_int8_variant

TARGET_AGREEMENT = 0.995
CALIBRATION_IMAGES = 64  # the job's INT8_CALIBRATION_IMAGES order of magnitude


def _calibration(train_dir: Path, count: int) -> list[Path]:
    paths = sorted(p for p in train_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return random.Random(0).sample(paths, min(count, len(paths)))


@torch.inference_mode()
def _logits(network: torch.nn.Module, paths: list[Path], pre) -> torch.Tensor:
    return torch.cat([network(batch.contiguous(memory_format=torch.channels_last)).float()
                      for batch in image_batches(paths, pre, batch_size=64)])


def measure(model_dir: Path, test_dir: Path, train_dir: Path,
            calibration_images: int = CALIBRATION_IMAGES) -> dict:
    """Quantize a copy of ``model_dir``; score fp32 and int8 on every image of ``test_dir``."""
    with tempfile.TemporaryDirectory(prefix="int8-bench-") as scratch:
        work = Path(scratch) / "model"
        shutil.copytree(model_dir, work)
        model, manifest = load_artifact(work)
        start = time.perf_counter()
        manifest = write_int8_variant(work, model, manifest,
                                      _calibration(train_dir, calibration_images))
        seconds = time.perf_counter() - start
        paths, labels = test_images(test_dir, tuple(manifest.class_names))
        torch.set_num_threads(SERVING_THREADS)
        fp32 = _logits(model.to(memory_format=torch.channels_last).eval(), paths,
                       manifest.preprocessing)
        int8 = _logits(load_int8(work, manifest), paths, manifest.preprocessing)
    return {"images": len(paths), "build_s": seconds,
            "agreement": float((fp32.argmax(1) == int8.argmax(1)).double().mean()),
            "fp32_acc": float((fp32.argmax(1) == labels).double().mean()),
            "int8_acc": float((int8.argmax(1) == labels).double().mean()),
            "max_diff": float((fp32 - int8).abs().max()),
            "format": manifest.variants[INT8].format}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--model-dir", type=Path, help="a trained artifact (default: the "
                        "reference network)")
    parser.add_argument("--test-dir", type=Path, help="test images, <class>/<image>")
    parser.add_argument("--train-dir", type=Path, help="calibration images, <class>/<image>")
    parser.add_argument("--calibration-images", type=int, default=CALIBRATION_IMAGES)
    args = parser.parse_args()
    if args.model_dir is None:
        reference = reference_network(args)
        args.model_dir, args.test_dir, args.train_dir = (reference.model_dir,
                                                         reference.test_dir, reference.train_dir)
    if args.test_dir is None or args.train_dir is None:
        parser.error("--model-dir needs --test-dir and --train-dir")
    result = measure(args.model_dir, args.test_dir, args.train_dir, args.calibration_images)
    ok = result["agreement"] >= TARGET_AGREEMENT
    print(f"int8_agreement: {args.model_dir}, {result['images']} test images, int8 "
          f"{result['format']} calibrated on {args.calibration_images} training images, built in "
          f"{result['build_s']:.0f} s, {SERVING_THREADS} thread")
    print("| measure | fp32 | int8 |")
    print("|---|---|---|")
    print(f"| test accuracy | {result['fp32_acc']:.4f} | {result['int8_acc']:.4f} |")
    print(f"| top-1 agreement with fp32 | | {result['agreement']:.4f} (goal >= "
          f"{TARGET_AGREEMENT}) |")
    print(f"| largest logit difference | | {result['max_diff']:.3f} |")
    print(f"RESULT int8_agreement agreement={result['agreement']:.4f} "
          f"accuracy_delta={result['int8_acc'] - result['fp32_acc']:+.4f} "
          f"images={result['images']} pass={str(ok).lower()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
