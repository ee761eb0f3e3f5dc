"""Checkpoints for resuming (managed spot training syncs the folder with S3): one after every
epoch, and one mid-epoch when the job is stopped (SIGTERM, see interruption.py).

A checkpoint holds everything the next step depends on: model, optimizer, scheduler and
gradient-scaler state, the best weights so far, the history, and the early-stopping counter.
Data order and augmentation are reseeded from (seed, epoch) at every epoch start, so a job
resumed at an epoch boundary repeats exactly what an uninterrupted one would have done. A
mid-epoch checkpoint also records the steps done in the epoch (the sampler position), the
epoch's running sums and the random number generators' states after the last step, so the
resumed epoch skips those batches and draws the same augmentation as an uninterrupted one.
Everything is plain data and tensors, so it loads with ``weights_only=True``.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from container_train import distributed
from container_train.engine import EpochProgress
from container_train.errors import TrainingError

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint-latest.pt"
FORMAT = 2  # 2: gradient scaler and mid-epoch progress
# Hyperparameters that may change between a run and its resumption (none that shape the result).
RESUMABLE_CHANGES = frozenset({"log-interval", "num-workers", "early-stopping-patience",
                               "profile-steps", "gpu-decode",
                               "abstain-rate", "abstain-score"})  # used after the epochs only


@dataclass
class TrainingState:
    epoch: int = 0  # epochs completed
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_valid_loss: float = float("inf")
    best_state: dict[str, torch.Tensor] | None = None
    bad_epochs: int = 0  # epochs since the best one, for early stopping
    mid_epoch: MidEpoch | None = None  # set when the job stopped inside epoch `epoch` + 1


@dataclass
class MidEpoch:
    """Where a stopped epoch stands, one entry per process (rank) of the job that stopped."""

    epoch: int
    progress: list[EpochProgress]
    rng: list[dict[str, Any]]


def rng_states() -> dict[str, Any]:
    """Every generator the training steps draw from (augmentation: torch's CPU generator)."""
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _mid_epoch_payload(mid: MidEpoch | None) -> dict[str, Any] | None:
    if mid is None:
        return None
    return {"epoch": mid.epoch, "rng": mid.rng, "progress": [p.__dict__ for p in mid.progress]}


def _mid_epoch(payload: dict[str, Any] | None) -> MidEpoch | None:
    if payload is None:
        return None
    return MidEpoch(payload["epoch"], [EpochProgress(**p) for p in payload["progress"]],
                    payload["rng"])


def save(directory: Path, *, state: TrainingState, model: torch.nn.Module,
         optimizer: torch.optim.Optimizer, scheduler: Any, class_names: list[str],
         hyperparameters: dict[str, Any], scaler: torch.amp.GradScaler | None = None) -> Path:
    """Write atomically (temp file + rename): a kill mid-write leaves the previous one."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / CHECKPOINT_FILE
    tmp = directory / (CHECKPOINT_FILE + ".tmp")
    payload = {
        "format": FORMAT,
        "epoch": state.epoch,
        "history": state.history,
        "best_epoch": state.best_epoch,
        "best_valid_loss": state.best_valid_loss,
        "best_state": state.best_state,
        "bad_epochs": state.bad_epochs,
        "mid_epoch": _mid_epoch_payload(state.mid_epoch),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "class_names": list(class_names),
        "hyperparameters": hyperparameters,
    }
    # Serialise in memory first: torch.save on a file turns ENOSPC into an opaque RuntimeError,
    # while a plain write raises OSError with the reason.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    try:
        with open(tmp, "wb") as stream:
            stream.write(buffer.getbuffer())
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise TrainingError(f"cannot write checkpoint {target}: {exc.strerror or exc}") from None
    return target


def _incompatibility(payload: dict[str, Any], class_names: list[str],
                     hyperparameters: dict[str, Any]) -> str | None:
    if payload.get("format") != FORMAT:
        return f"checkpoint format {payload.get('format')} != {FORMAT}"
    if payload.get("class_names") != list(class_names):
        return "the classes differ"
    old = payload.get("hyperparameters", {})
    changed = sorted(k for k in set(old) | set(hyperparameters)
                     if k not in RESUMABLE_CHANGES and old.get(k) != hyperparameters.get(k))
    return f"hyperparameters changed: {changed}" if changed else None


def load_if_compatible(directory: Path | None, *, model: torch.nn.Module,
                       optimizer: torch.optim.Optimizer, scheduler: Any,
                       class_names: list[str], hyperparameters: dict[str, Any],
                       scaler: torch.amp.GradScaler | None = None) -> TrainingState | None:
    """Restore the latest checkpoint into model/optimizer/scheduler/scaler, or None to start
    fresh. The random generators of a mid-epoch checkpoint are restored by the caller, when
    the epoch's loader exists (``restore_rng``)."""
    if directory is None or not (directory / CHECKPOINT_FILE).is_file():
        return None
    path = directory / CHECKPOINT_FILE
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        log.warning("ignoring unreadable checkpoint %s (%s); starting fresh", path, exc)
        return None
    reason = _incompatibility(payload, class_names, hyperparameters)
    if reason:
        log.warning("ignoring checkpoint %s: %s; starting fresh", path, reason)
        return None
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    if scaler is not None and payload["scaler"] is not None:
        scaler.load_state_dict(payload["scaler"])
    mid = _mid_epoch(payload["mid_epoch"])
    if mid is None:
        log.info("resuming from %s after epoch %d", path, payload["epoch"])
    else:
        log.info("resuming from %s in epoch %d after step %d", path, mid.epoch,
                 mid.progress[0].steps)
    return TrainingState(
        epoch=payload["epoch"],
        history=payload["history"],
        best_epoch=payload["best_epoch"],
        best_valid_loss=payload["best_valid_loss"],
        best_state=payload["best_state"],
        bad_epochs=payload["bad_epochs"],
        mid_epoch=mid,
    )


def resume_point(state: TrainingState, ctx: distributed.Context,
                 epoch: int) -> EpochProgress | None:
    """This process's progress in ``epoch`` when the checkpoint stopped inside it (its random
    generators restored), else None."""
    mid = state.mid_epoch
    if mid is None or mid.epoch != epoch:
        return None
    if len(mid.progress) != ctx.world_size:
        log.warning("epoch %d was stopped with %d process(es) and this job has %d: it restarts "
                    "from its first batch with the weights reached", epoch, len(mid.progress),
                    ctx.world_size)
        return None
    restore_rng(mid.rng[ctx.rank])
    return mid.progress[ctx.rank]


class _Skipping(Sampler[int]):
    """The rest of an epoch's sampler: its first ``skip`` indices left out."""

    def __init__(self, sampler: Sampler[int], skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)  # type: ignore[arg-type]


def remaining_batches(loader: DataLoader, steps_done: int, seed: int) -> DataLoader:
    """The batches of a stopped epoch after ``steps_done``, with the loader's settings. Its
    own generator: starting its iterator draws a seed, which must not move the restored
    global generator that the augmentation draws from."""
    return DataLoader(loader.dataset, batch_size=loader.batch_size,
                      sampler=_Skipping(loader.sampler, steps_done * (loader.batch_size or 1)),
                      num_workers=loader.num_workers, pin_memory=loader.pin_memory,
                      collate_fn=loader.collate_fn,  # gpu-decode's byte batches
                      generator=torch.Generator().manual_seed(seed))
