"""Image-folder splits -> checked sample lists -> datasets and loaders."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchvision import transforms

from container_train.errors import TrainingError
from container_train.gpu_decode import Collate, DeviceAugment, EncodedImageDataset
from model_artifact.preprocess import (
    EvalPreprocessing,
    ImageDecodeError,
    ImageTooLargeError,
    load_image,
)

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
NAMED_BAD_FILES = 5  # how many unreadable files an error message names
UNREADABLE = "unreadable"


@dataclass(frozen=True)
class Split:
    name: str
    samples: list[tuple[Path, int]]
    skipped: list[Path]


def _class_dirs(split_dir: Path) -> list[Path]:
    return sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(class_dir: Path) -> list[Path]:
    return sorted(
        p for p in class_dir.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not p.name.startswith(".")
    )


def discover_classes(splits: dict[str, Path]) -> list[str]:
    """Class names from train/, checked against every other split."""
    classes = [p.name for p in _class_dirs(splits["train"])]
    if not classes:
        raise TrainingError(f"train split {splits['train']} has no class folders")
    for name, split_dir in splits.items():
        found = [p.name for p in _class_dirs(split_dir)]
        if name != "train" and set(found) != set(classes):
            missing, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
            raise TrainingError(
                f"classes in '{name}' differ from 'train': missing {missing[:10]}, "
                f"extra {extra[:10]} ({len(missing)} missing, {len(extra)} extra)"
            )
        for class_name in found:
            if not _image_files(split_dir / class_name):
                raise TrainingError(f"class folder '{class_name}' in '{name}' has no images "
                                    f"({split_dir / class_name})")
    return classes


def _check(path: Path, pre: EvalPreprocessing) -> str | None:
    """None if the image decodes and resizes within the limits, else why not (one line).
    The limits are serving's (``pre.load``): a 1x20000 PNG of 118 bytes would otherwise be
    resized to GBs of pixels and get the job OOM-killed with no failure file."""
    try:
        pre.load(path)
        return None
    except ImageTooLargeError as exc:
        return f"too large: {exc}"
    except ImageDecodeError:
        return UNREADABLE


def _what(reasons: list[str]) -> str:
    large = sum(r != UNREADABLE for r in reasons)
    return ("too large" if large == len(reasons) else "unreadable" if not large
            else "unreadable or too large")


def scan_split(name: str, split_dir: Path, classes: list[str], *, pre: EvalPreprocessing,
               max_corrupt_fraction: float, workers: int) -> Split:
    """Decode every image once as evaluation will; skip unreadable and too large ones, fail
    when there are too many."""
    candidates = [(path, index) for index, class_name in enumerate(classes)
                  for path in _image_files(split_dir / class_name)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # Pillow releases the GIL
        checks = list(pool.map(lambda item: _check(item[0], pre), candidates))
    samples = [item for item, why in zip(candidates, checks, strict=True) if why is None]
    bad = [(item[0], why) for item, why in zip(candidates, checks, strict=True) if why]
    skipped = [path for path, _ in bad]
    share = len(skipped) / len(candidates) if candidates else 0.0
    what = _what([why for _, why in bad])
    if skipped:
        log.warning("%s: skipped %d %s image(s) of %d (%.1f%%), e.g. %s", name, len(skipped),
                    what, len(candidates), 100 * share, [str(p) for p in skipped[:3]])
    for path, why in bad[:NAMED_BAD_FILES]:
        if why != UNREADABLE:
            log.warning("%s: %s: %s", name, path, why)
    if share > max_corrupt_fraction:
        raise TrainingError(
            f"{len(skipped)} of {len(candidates)} images in '{name}' are {what} "
            f"({100 * share:.1f}% > max-corrupt-fraction {100 * max_corrupt_fraction:.1f}%): "
            + ", ".join(str(p) if why == UNREADABLE else f"{p} ({why})"
                        for p, why in bad[:NAMED_BAD_FILES])
        )
    log.info("%s: %d images in %d classes", name, len(samples), len(classes))
    return Split(name, samples, skipped)


class ImageListDataset(Dataset):
    def __init__(self, samples: list[tuple[Path, int]], transform: Callable,
                 min_side: int | None, resize: int | None = None):
        self.samples = samples
        self.transform = transform
        self.min_side = min_side
        self.resize = resize  # scan_split's extreme-shape guard, again at load time

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        image = load_image(path, min_side=self.min_side, resize=self.resize)
        return self.transform(image), label


def train_transform(pre: EvalPreprocessing) -> Callable:
    """Random resized crop + horizontal flip to uint8 pixels; like ``pre.pixels()``, the batch
    is normalised on the device (``pre.normalize``)."""
    return transforms.Compose([
        transforms.RandomResizedCrop(pre.crop_size,
                                     interpolation=transforms.InterpolationMode(pre.interpolation)),
        transforms.RandomHorizontalFlip(),
        transforms.PILToTensor(),
    ])


def resolve_num_workers(requested: int | str, device: torch.device) -> int:
    """DataLoader worker processes per training process. auto: on GPUs, the host's CPUs shared
    by its processes (one per GPU, max 8 workers each) feed the device; on CPU, 0: every core
    already runs the model's threads, and worker processes competing for them cost more than
    decoding in the loop (bench/README.md, train_finetune.py, has the measurement)."""
    if requested != "auto":
        return int(requested)
    if device.type == "cpu":
        return 0
    procs_per_host = torch.cuda.device_count() or 1
    return max(1, min((os.cpu_count() or 1) // procs_per_host, 8))


class ShardSampler(Sampler[int]):
    """Every world_size-th sample from rank on, no padding: evaluation counts each image once."""

    def __init__(self, length: int, rank: int, world_size: int):
        self.indices = list(range(rank, length, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def make_loader(split: Split, pre: EvalPreprocessing, *, train: bool, batch_size: int,
                num_workers: int, seed: int, augment: bool = True, rank: int = 0,
                world_size: int = 1, decode_on_device: bool = False) -> DataLoader:
    """Batches are uint8 pixels; the engine normalises them on the device (pre.normalize).
    ``decode_on_device`` (training loaders only; gpu-decode): batches of file bytes that the
    engine decodes and augments on the device (container_train.gpu_decode).
    Train loaders shuffle with a DistributedSampler (set_epoch per epoch, even on one
    process) so data order depends only on (seed, epoch): resuming reproduces it, and rank r
    of W gets positions r, r+W, ... of the same permutation a single process would use."""
    dataset: Dataset
    collate = None
    if train and decode_on_device:
        dataset = EncodedImageDataset(split.samples, pre)
        collate = Collate(DeviceAugment(pre, augment=augment))
    else:
        transform = train_transform(pre) if train and augment else pre.pixels()
        dataset = ImageListDataset(split.samples, transform, min_side=pre.min_side,
                                   resize=pre.resize)
    sampler: Sampler[int]
    if train:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                     seed=seed, drop_last=False)
    else:
        sampler = ShardSampler(len(dataset), rank, world_size)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )
