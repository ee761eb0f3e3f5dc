"""Fashion-MNIST as an image-folder data set with classes held out, for the benches.

The data comes from Debian's ``dataset-fashion-mnist`` (IDX files, installed here when missing,
never committed). :func:`prepare` writes, under a cache folder outside the repository::

    <root>/data/{train,valid}/<known class>/<index>.png   (what the training job reads)
    <root>/test/<known class>/<index>.png                 (scored by the bench)
    <root>/unknown/<held-out class>/<index>.png           (test images of held-out classes)

train and valid come from the IDX training file (disjoint), test and unknown from the IDX test
file. The held-out classes appear in no split the job sees: the training job requires the same
class folders in every split, so their test images live beside the data set, not in it. The
test split lives beside it too, so the job does not spend a pass scoring it (the bench does).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import subprocess
import time
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
from PIL import Image

PACKAGE = "dataset-fashion-mnist"
# Folder-safe names of the ten labels, in label order (the data set's README).
CLASSES = ("tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
           "bag", "ankle_boot")
IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


class SetupError(RuntimeError):
    """The data set cannot be installed or read; the message is one line."""


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip or raw) -> an array of its shape and type."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as stream:
        data = stream.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in IDX_TYPES:
        raise SetupError(f"{path}: not an IDX file (magic {data[:4].hex()})")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    dtype = np.dtype(IDX_TYPES[data[2]])
    body = data[4 + 4 * ndim:]
    if len(body) != dtype.itemsize * int(np.prod(shape)):
        raise SetupError(f"{path}: {len(body)} bytes of data for shape {shape}")
    return np.frombuffer(body, dtype=dtype).reshape(shape)


def package_dir() -> Path:
    """The folder holding the package's IDX files; installs the package when missing."""
    if subprocess.run(["dpkg", "-s", PACKAGE], capture_output=True).returncode != 0:
        print(f"installing {PACKAGE} (apt-get)", flush=True)
        install = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends",
                                  PACKAGE], capture_output=True, text=True,
                                 env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if install.returncode != 0:
            why = (install.stderr.strip().splitlines() or ["no output"])[-1]
            raise SetupError(f"cannot install {PACKAGE} with apt-get: {why}")
    listing = subprocess.run(["dpkg", "-L", PACKAGE], capture_output=True, text=True).stdout
    for line in listing.splitlines():
        if line.endswith("/" + FILES["train"][0]):
            return Path(line).parent
    raise SetupError(f"{PACKAGE} is installed but lists no {FILES['train'][0]}")


@dataclass(frozen=True)
class Layout:
    """Which images go where: the held-out classes and how many images per known class."""

    held_out: tuple[str, ...]
    train_per_class: int
    valid_per_class: int
    test_per_class: int
    seed: int = 0

    def known(self) -> list[str]:
        return [name for name in CLASSES if name not in self.held_out]


def _take(labels: np.ndarray, label: int, counts: list[int], rng: np.random.Generator
          ) -> list[np.ndarray]:
    """Disjoint random draws of ``counts`` indices of ``label``."""
    indices = rng.permutation(np.flatnonzero(labels == label))
    if sum(counts) > len(indices):
        raise SetupError(f"class {CLASSES[label]} has {len(indices)} images, {sum(counts)} asked")
    bounds = np.cumsum([0, *counts])
    return [np.sort(indices[lo:hi]) for lo, hi in pairwise(bounds)]


def split_indices(layout: Layout, train_labels: np.ndarray, test_labels: np.ndarray
                  ) -> dict[str, dict[str, np.ndarray]]:
    """split -> class -> indices into its IDX file (train/valid: training file; test/unknown:
    test file). Held-out classes are only in ``unknown``."""
    unknown = [name for name in layout.held_out if name not in CLASSES]
    if unknown or len(set(layout.held_out)) != len(layout.held_out):
        raise SetupError(f"held-out classes must be distinct names of {CLASSES}: {unknown}")
    rng = np.random.default_rng(layout.seed)
    splits: dict[str, dict[str, np.ndarray]] = {"train": {}, "valid": {}, "test": {},
                                                "unknown": {}}
    for label, name in enumerate(CLASSES):
        test_part = "unknown" if name in layout.held_out else "test"
        (splits[test_part][name],) = _take(test_labels, label, [layout.test_per_class], rng)
        if name not in layout.held_out:
            splits["train"][name], splits["valid"][name] = _take(
                train_labels, label, [layout.train_per_class, layout.valid_per_class], rng)
    return splits


def _write(images: np.ndarray, indices: dict[str, np.ndarray], folder: Path) -> None:
    for name, chosen in indices.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for index in chosen:
            # Grayscale PNG: the project's loader converts to RGB as serving does.
            Image.fromarray(images[index], mode="L").save(folder / name / f"{index:05d}.png")


def prepare(root: Path, layout: Layout, source: Path | None = None) -> dict[str, Path]:
    """Write the layout under ``root`` (reused when a previous call wrote the same one).
    Returns the folders: data (for the training job; train and valid), test, unknown."""
    marker = root / "layout.json"
    wanted = json.dumps(asdict(layout), sort_keys=True)
    folders = {"data": root / "data", "test": root / "test", "unknown": root / "unknown"}
    if marker.is_file() and marker.read_text() == wanted:
        return folders
    source = source or package_dir()
    arrays = {part: (read_idx(source / images), read_idx(source / labels))
              for part, (images, labels) in FILES.items()}
    splits = split_indices(layout, arrays["train"][1], arrays["test"][1])
    shutil.rmtree(root, ignore_errors=True)
    for split, indices in splits.items():
        part = "train" if split in ("train", "valid") else "test"
        folder = folders["data"] / split if part == "train" else folders[split]
        _write(arrays[part][0], indices, folder)
    marker.write_text(wanted)
    return folders


@dataclass(frozen=True)
class TrainSettings:
    """The training job's hyperparameters for a from-scratch run (docs/training.md names them);
    the defaults fit about ten minutes on 2 shared CPU cores (bench/README.md)."""

    epochs: int = 2
    batch_size: int = 32
    lr: float = 1e-3
    image_size: int = 32  # the job's minimum; Fashion-MNIST images are 28 px
    augment: bool = False  # the default random resized crop (down to 8% of the area) loses
    # most of a 28-px garment, and a few epochs learn more from whole images
    seed: int = 42
    abstain_score: str = "energy"  # the job's default; features fits novelty.pt as well

    def values(self) -> dict[str, object]:
        # abstain-score only when not the default: cached energy models keep their marker.
        return {"weights": "none", "trainable-layers": "all", "compile": False, "int8": False,
                "epochs": self.epochs, "batch-size": self.batch_size, "lr": self.lr,
                "image-size": self.image_size, "augment": self.augment, "seed": self.seed,
                "log-interval": 50, **({"abstain-score": self.abstain_score}
                                       if self.abstain_score != "energy" else {})}


def train(data_dir: Path, run_dir: Path, settings: TrainSettings, *, retrain: bool = False
          ) -> tuple[Path, float]:
    """Train with the project's own job in this process; returns (model dir, seconds). A model
    that an earlier call trained on the same data with the same settings is reused (0 s)."""
    from container_train.config import JobConfig
    from container_train.main import run

    marker = run_dir / "settings.json"
    wanted = json.dumps({"data": str(data_dir), **settings.values()}, sort_keys=True)
    model_dir = run_dir / "model"
    if not retrain and marker.is_file() and marker.read_text() == wanted:
        return model_dir, 0.0
    shutil.rmtree(run_dir, ignore_errors=True)
    config = JobConfig.from_values(settings.values(), data_dir=data_dir, model_dir=model_dir,
                                   output_data_dir=run_dir / "output")
    start = time.perf_counter()
    run(config)
    seconds = time.perf_counter() - start
    marker.write_text(wanted)
    return model_dir, seconds
