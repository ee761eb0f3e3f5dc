"""Frozen-backbone training, end to end: the seed's loop vs ours, same data, same machine, one run.

Seed-style baseline (what the course notebook did): torchvision ImageFolder, resize + crop +
flip, the full ResNet50 forward for every image in every epoch, a validation pass every
epoch, batch 32, no DataLoader workers, Adam on the head. Ours: `container_train` with
trainable-layers=0 (features once per image and view, head-only epochs), default settings.
Both start from the same random-init backbone (no ImageNet weights can be downloaded here), so
accuracies are near chance for both and only compared for "not worse".

    .venv/bin/python bench/train_frozen.py [--epochs 10] [--data sample_data/photos5]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torchvision import datasets, transforms

from container_train.config import JobConfig
from container_train.main import run
from container_train.model import create_model
from model_artifact.preprocess import IMAGENET_MEAN, IMAGENET_STD

REPO = Path(__file__).resolve().parent.parent

TARGET_SPEEDUP = 8.0


def seed_style(data: Path, epochs: int, seed: int) -> tuple[float, float]:
    """The notebook's loop. Returns (seconds, valid accuracy after the last epoch)."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    norm = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224),
                                   transforms.RandomHorizontalFlip(), transforms.ToTensor(), norm])
    eval_tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224),
                                  transforms.ToTensor(), norm])
    train = torch.utils.data.DataLoader(datasets.ImageFolder(data / "train", train_tf),
                                        batch_size=32, shuffle=True)
    valid = torch.utils.data.DataLoader(datasets.ImageFolder(data / "valid", eval_tf),
                                        batch_size=32)
    model = create_model(len(train.dataset.classes), None)
    for param in model.parameters():
        param.requires_grad = False
    model.fc = nn.Linear(2048, len(train.dataset.classes))
    optimizer = torch.optim.Adam(model.fc.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    accuracy = 0.0
    for _ in range(epochs):
        model.train()
        for images, labels in train:
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for images, labels in valid:
                correct += (model(images).argmax(1) == labels).sum().item()
        accuracy = correct / len(valid.dataset)
    return time.perf_counter() - start, accuracy


def ours(data: Path, epochs: int, seed: int, precision: str = "auto") -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        config = JobConfig.from_values(
            {"weights": "none", "epochs": epochs, "batch-size": 32, "seed": seed,
             "log-interval": 1000, "precision": precision,  # auto: bf16 features on AMX
             "compile": False},  # the seed loop builds no serving variant: same work both sides
            data_dir=data, model_dir=Path(tmp, "model"), output_data_dir=Path(tmp, "out"))
        run(config)
        seconds = time.perf_counter() - start
        final = json.loads(Path(f"{tmp}/out/metrics.json").read_text())["final"]
    return seconds, final["valid_accuracy"]  # of the kept (best valid loss) weights


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "sample_data" / "photos5")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32"),
                        help="ours: the job's precision (auto: the feature pass in bf16 on AMX)")
    args = parser.parse_args()
    base_s, base_acc = seed_style(args.data, args.epochs, args.seed)
    our_s, our_acc = ours(args.data, args.epochs, args.seed, args.precision)
    speedup = base_s / our_s
    images = sum(1 for _ in (args.data / "train").rglob("*.jpg"))
    print(f"\ntrain_frozen: {images} training images at 224 px, {args.epochs} epochs, "
          f"{torch.get_num_threads()} threads")
    print("| loop | seconds | valid accuracy of the model it delivers |")
    print("|---|---|---|")
    print(f"| seed-style (full forward every epoch; last epoch) | {base_s:.1f} | {base_acc:.3f} |")
    print(f"| ours (feature cache, head-only epochs; best epoch) | {our_s:.1f} | {our_acc:.3f} |")
    print(f"| speedup | {speedup:.1f}x | |")
    # Random-init backbones score near chance: "not worse" allows one image of noise.
    tolerance = 1 / sum(1 for _ in (args.data / "valid").rglob("*.jpg"))
    ok = speedup >= TARGET_SPEEDUP and our_acc >= base_acc - tolerance
    print(f"RESULT train_frozen speedup={speedup:.2f} target>={TARGET_SPEEDUP:g} "
          f"pass={str(ok).lower()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
