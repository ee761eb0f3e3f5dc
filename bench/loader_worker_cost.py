"""What one DataLoader worker spends per training image: the CPU path (Pillow decode in draft
mode, random resized crop, flip, to uint8 tensor) vs gpu-decode's worker (read the file, check
its header; the GPU decodes and augments). Runs on any machine, one thread, so the ratio says
how many fewer worker cores a GPU needs to be fed; the GPU side is bench/train_finetune.py.

    .venv/bin/python bench/loader_worker_cost.py [--image-size 224] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

from container_train.data import ImageListDataset, train_transform
from container_train.gpu_decode import EncodedImageDataset
from model_artifact.preprocess import EvalPreprocessing

REPO = Path(__file__).resolve().parent.parent


def ms_per_image(dataset: Dataset, rounds: int) -> float:
    """Median over rounds of the mean time of one __getitem__ (all images per round)."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for index in range(len(dataset)):
            dataset[index]
        times.append((time.perf_counter() - start) / len(dataset))
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "sample_data" / "photos5")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a worker's share of the host
    pre = EvalPreprocessing.for_image_size(args.image_size)
    samples = [(p, 0) for p in sorted((args.data / "train").rglob("*.jpg"))]
    cpu = ms_per_image(ImageListDataset(samples, train_transform(pre), min_side=pre.min_side,
                                        resize=pre.resize), args.rounds)
    gpu = ms_per_image(EncodedImageDataset(samples, pre), args.rounds)
    print(f"\nloader_worker_cost: {len(samples)} training photos, {args.image_size} px, "
          f"one thread, median of {args.rounds} rounds")
    print("| worker | ms per image |")
    print("|---|---|")
    print(f"| CPU path (decode, crop, flip, to tensor) | {cpu:.3f} |")
    print(f"| gpu-decode (read bytes, check header) | {gpu:.3f} |")
    print(f"RESULT loader_worker_cost ratio={cpu / gpu:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
