"""Frozen-backbone fast path (trainable-layers=0): backbone features are computed once per
image and augmentation view, then every epoch trains only the linear head on them.

Views: 0 is the evaluation preprocessing (resize + centre crop), 1 its horizontal mirror, and
2..K-1 random resized crops + flips drawn once per (seed, image, view). Each epoch a training
image contributes one of its K views, chosen from (seed, epoch); valid and test use view 0.
Compared with on-the-fly augmentation, the model sees K fixed variants of each image instead
of a fresh random crop every epoch: much cheaper, somewhat less regularisation.

With ``feature-cache-dir`` the features are also kept on disk, keyed by the file's content,
the preprocessing, the view and a fingerprint of the backbone weights (and its arithmetic), so
a changed image, image size or backbone is recomputed and everything else is reused across
jobs (local tuning).

Arithmetic: on a CPU with AMX the pass runs the backbone in bfloat16 (``features_in_bf16``),
the fastest forward there, as serving's bf16 package is (model_artifact.compiled); the
features are widened to float32 for the head. Elsewhere, or with ``precision=fp32``, fp32.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision import transforms

from container_train.data import ShardSampler, Split
from model_artifact.compiled import InBfloat16, has_amx
from model_artifact.preprocess import EvalPreprocessing

log = logging.getLogger(__name__)
FORMAT = 1


def view_transform(pre: EvalPreprocessing, view: int):
    mode = transforms.InterpolationMode(pre.interpolation)
    if view == 0:
        return pre.transform()
    if view == 1:
        head = [transforms.Resize(pre.resize, interpolation=mode),
                transforms.CenterCrop(pre.crop_size), transforms.RandomHorizontalFlip(p=1.0)]
    else:
        head = [transforms.RandomResizedCrop(pre.crop_size, interpolation=mode),
                transforms.RandomHorizontalFlip()]
    return transforms.Compose([*head, transforms.ToTensor(), transforms.Normalize(pre.mean,
                                                                                  pre.std)])


class _ViewImages(Dataset):
    """Images of one view; random views are seeded per (seed, image, view), so reproducible."""

    def __init__(self, paths: list[Path], pre: EvalPreprocessing, view: int, seed: int,
                 indices: list[int]):
        self.paths, self.pre, self.view, self.seed, self.indices = paths, pre, view, seed, indices
        self.transform = view_transform(pre, view)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.view >= 2:
            torch.manual_seed(hash((self.seed, self.indices[i], self.view)) & 0x7FFFFFFF)
        return self.transform(self.pre.load(self.paths[i]))  # extreme shapes refused


def backbone_fingerprint(net: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        if not name.startswith("fc."):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def _entry_key(content_sha: str, pre: EvalPreprocessing, view: int, seed: int) -> str:
    spec = json.dumps({"format": FORMAT, "file": content_sha, "pre": pre.to_dict(),
                       "view": view, "seed": seed if view >= 2 else None}, sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()


MEMORY_BUDGET_BYTES = 512 * 1024 * 1024


class FeatureStore:
    """Features on disk, one small file per (image content, preprocessing, view).

    Entries are content-addressed (backbone fingerprint folder, key from the image's sha256,
    preprocessing and view), so a file never changes meaning: the process also keeps what it
    read or wrote in memory, up to MEMORY_BUDGET_BYTES, for the next job in the same process
    (local tuning's trials: reading 227 files back was a tenth of a cached trial)."""

    _memory: ClassVar[dict[Path, torch.Tensor]] = {}
    _memory_bytes: ClassVar[int] = 0

    def __init__(self, root: Path | None, fingerprint: str):
        self.folder = root / fingerprint if root else None

    def _path(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / key[:2] / f"{key}.pt"

    @classmethod
    def _remember(cls, path: Path, features: torch.Tensor) -> None:
        size = features.numel() * features.element_size()
        if path not in cls._memory and cls._memory_bytes + size <= MEMORY_BUDGET_BYTES:
            cls._memory[path] = features
            cls._memory_bytes += size

    def get(self, key: str) -> torch.Tensor | None:
        if self.folder is None:
            return None
        path = self._path(key)
        if path in self._memory and path.is_file():  # deleted on disk: deleted here too
            return self._memory[path].clone()
        if not path.is_file():
            return None
        try:
            features = torch.load(path, weights_only=True)
        except Exception:  # a torn write: recompute
            return None
        self._remember(path, features.clone())
        return features

    def put(self, key: str, features: torch.Tensor) -> None:
        if self.folder is None:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(features.clone(), tmp)
        tmp.replace(path)
        self._remember(path, features.clone())


def features_in_bf16(device: torch.device, precision: str) -> bool:
    """The feature pass runs in bfloat16: on a CPU with AMX under ``precision=auto``."""
    return device.type == "cpu" and precision == "auto" and has_amx()


def backbone_of(net: nn.Module, bf16: bool = False) -> nn.Module:
    """Everything but the head, flattened; ``bf16``: a bfloat16 copy (float32 in and out)."""
    backbone = nn.Sequential(*(m for name, m in net.named_children() if name != "fc"),
                             nn.Flatten()).eval()
    return InBfloat16(backbone).to(memory_format=torch.channels_last) if bf16 else backbone


@torch.inference_mode()
def extract_features(backbone: nn.Module, width: int, split: Split, pre: EvalPreprocessing,
                     views: int, *, seed: int, device: torch.device, batch_size: int,
                     num_workers: int, store: FeatureStore) -> torch.Tensor:
    """[images, views, width] features of ``backbone`` (backbone_of)."""
    start = time.perf_counter()
    paths = [path for path, _ in split.samples]
    shas = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    out = torch.empty(len(paths), views, width)
    computed = 0
    for view in range(views):
        keys = [_entry_key(sha, pre, view, seed) for sha in shas]
        missing = []
        for i, key in enumerate(keys):
            cached = store.get(key)
            if cached is None:
                missing.append(i)
            else:
                out[i, view] = cached
        if not missing:
            continue
        dataset = _ViewImages([paths[i] for i in missing], pre, view, seed, missing)
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
        position = 0
        for images in loader:
            images = images.to(device).contiguous(memory_format=torch.channels_last)
            feats = backbone(images).float().cpu()
            for row in feats:
                index = missing[position]
                out[index, view] = row
                store.put(keys[index], row)
                position += 1
        computed += len(missing)
    log.info("%s features: %d image-views computed, %d from cache (%d images x %d views) "
             "in %.1f s%s", split.name, computed, len(paths) * views - computed, len(paths),
             views, time.perf_counter() - start,
             ", bf16 (AMX)" if isinstance(backbone, InBfloat16) else "")
    return out


class FeatureDataset(Dataset):
    """(features, label) pairs; training picks one view per image and epoch."""

    def __init__(self, features: torch.Tensor, labels: list[int], seed: int, train: bool):
        self.features, self.labels, self.seed, self.train = features, labels, seed, train
        self.choice = torch.zeros(len(labels), dtype=torch.long)

    def set_epoch(self, epoch: int) -> None:
        if self.train and self.features.shape[1] > 1:
            generator = torch.Generator().manual_seed(self.seed * 1000 + epoch)
            self.choice = torch.randint(self.features.shape[1], (len(self.labels),),
                                        generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.features[i, self.choice[i]], self.labels[i]


def make_feature_loaders(net: nn.Module, splits: dict[str, Split], pre: EvalPreprocessing, *,
                         views: int, seed: int, batch_size: int, num_workers: int,
                         device: torch.device, cache_dir: Path | None, rank: int = 0,
                         world_size: int = 1, bf16: bool = False) -> dict[str, DataLoader]:
    # bf16 features are other numbers than fp32's: their own cache folder
    store = FeatureStore(cache_dir, backbone_fingerprint(net) + ("-bf16" if bf16 else ""))
    backbone = backbone_of(net, bf16)  # once for every split (the bf16 copy casts 23M weights)
    loaders = {}
    for name, split in splits.items():
        train = name == "train"
        feats = extract_features(backbone, net.fc.in_features, split, pre,
                                 views if train else 1, seed=seed, device=device,
                                 batch_size=batch_size, num_workers=num_workers, store=store)
        dataset = FeatureDataset(feats, [label for _, label in split.samples], seed, train)
        sampler = (DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                      seed=seed) if train
                   else ShardSampler(len(dataset), rank, world_size))
        loaders[name] = DataLoader(dataset, batch_size=batch_size, sampler=sampler)
    return loaders
