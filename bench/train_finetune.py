"""Fine-tuning throughput: the real training loop vs the raw forward+backward rate of the same
model on synthetic tensors of the same shape, measured in one run on the same machine.

The real loop reads JPEGs from the bundled sample data, decodes (Pillow draft mode), augments,
batches in DataLoader workers (or, ``--gpu-decode true``, the default on CUDA: the workers read
the bytes and the GPU decodes and augments) and trains (channels_last, AMP on GPUs); the raw
rate is the ceiling the loop can reach if data loading were free. Target: real >= 90% of raw.

    .venv/bin/python bench/train_finetune.py [--image-size 128] [--trainable-layers all]

On a GPU the bundled 89 training photos make epochs of a few steps; ``--repeat N`` links each
photo N times into a temporary copy of the data so that epochs are long enough to time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from container_train.config import JobConfig
from container_train.engine import Precision
from container_train.main import run
from container_train.model import apply_freezing, create_model, set_train_mode
from job_contract.hyperparameters import Hyperparameters

REPO = Path(__file__).resolve().parent.parent

TARGET = 0.90


def raw_rate(image_size: int, batch_size: int, stages: int, steps: int) -> float:
    """Images/s of forward + backward + optimizer step on random tensors (median of steps)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = Precision.for_device(device)
    net = create_model(5, None)
    params = apply_freezing(net, stages)
    net = net.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    criterion = torch.nn.CrossEntropyLoss()
    set_train_mode(net, stages)
    images = torch.randn(batch_size, 3, image_size, image_size, device=device
                         ).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 5, (batch_size,), device=device)
    times = []
    for step in range(steps + 2):  # two warm-up steps
        start = time.perf_counter()
        with precision.autocast(device):
            loss = criterion(net(images), labels)
        optimizer.zero_grad(set_to_none=True)
        precision.step(loss, optimizer)
        loss.item()
        if step >= 2:
            times.append(time.perf_counter() - start)
    return batch_size / statistics.median(times)


def repeated(data: Path, copies: int, dest: Path) -> Path:
    """A copy of the data tree in which each image appears `copies` times (symlinks)."""
    for image in data.rglob("*.jpg"):
        target = dest / image.relative_to(data).parent
        target.mkdir(parents=True, exist_ok=True)
        for i in range(copies):
            (target / f"{image.stem}-{i}{image.suffix}").symlink_to(image.resolve())
    return dest


def real_rate(data: Path, image_size: int, batch_size: int, layers: str, epochs: int,
              repeat: int = 1, num_workers: str = "auto", gpu_decode: str = "auto") -> float:
    """Median images/s the training job reports for its epochs after the first (train phase
    only; the first epoch pays one-off start-up costs)."""
    with tempfile.TemporaryDirectory() as tmp:
        if repeat > 1:
            data = repeated(data, repeat, Path(tmp) / "data")
        run(JobConfig.from_values(
            {"weights": "none", "image-size": image_size, "batch-size": batch_size,
             "trainable-layers": layers, "epochs": epochs, "num-workers": num_workers,
             "gpu-decode": gpu_decode, "log-interval": 1000,
             "compile": False},  # epochs are measured; skip the serving build
            data_dir=data, model_dir=Path(tmp, "m"), output_data_dir=Path(tmp, "o")))
        history = json.loads(Path(f"{tmp}/o/metrics.json").read_text())["history"]
    return statistics.median(h["images_per_sec"] for h in history[1:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "sample_data" / "photos5")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--trainable-layers", default="all")
    parser.add_argument("--epochs", type=int, default=4, help="epochs 2.. are measured")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=1,
                        help="link each photo this many times (longer epochs on a GPU)")
    parser.add_argument("--num-workers", default="auto")
    parser.add_argument("--gpu-decode", default="auto", choices=("auto", "true", "false"),
                        help="the job's gpu-decode: decode and augment on the GPU (auto: on CUDA)")
    args = parser.parse_args()
    stages = Hyperparameters.from_mapping(
        {"trainable-layers": args.trainable_layers}).trainable_stages
    real = real_rate(args.data, args.image_size, args.batch_size, args.trainable_layers,
                     args.epochs, args.repeat, args.num_workers, args.gpu_decode)
    raw = raw_rate(args.image_size, args.batch_size, stages, args.steps)
    ratio = real / raw
    device = (f"{torch.cuda.get_device_name()}, {Precision.for_device(torch.device('cuda')).name}"
              if torch.cuda.is_available() else f"cpu, {torch.get_num_threads()} threads")
    print(f"\ntrain_finetune: {args.image_size} px, batch {args.batch_size}, trainable-layers "
          f"{args.trainable_layers}, {device}, num-workers {args.num_workers}, "
          f"gpu-decode {args.gpu_decode}, "
          f"{len(list((args.data / 'train').rglob('*.jpg'))) * args.repeat} training images")
    print("| measurement | images/s |")
    print("|---|---|")
    print(f"| raw forward+backward on synthetic tensors (median of {args.steps} steps) "
          f"| {raw:.2f} |")
    print(f"| real loop, median of epochs 2-{args.epochs} (JPEG decode, augmentation, loader) "
          f"| {real:.2f} |")
    print(f"| real / raw | {ratio:.2f} |")
    print(f"RESULT train_finetune ratio={ratio:.3f} target>={TARGET:g} "
          f"pass={str(ratio >= TARGET).lower()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
