"""One training epoch and one evaluation pass, in the style of torchvision's reference train.py.

``Callback`` is the seam for observers (the Debugger hook, step timers): they see the model,
the mode switches and every step, and cannot change the loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader

log = logging.getLogger(__name__)


class Callback:
    """No-op base; override what you need."""

    def on_train_begin(self, model: nn.Module, criterion: nn.Module) -> None: ...

    def on_mode(self, mode: str) -> None:  # "train" | "eval"
        ...

    def on_step_end(self, mode: str, step: int, loss: float, batch_size: int,
                    data_seconds: float, compute_seconds: float) -> None: ...

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None: ...

    def on_train_end(self) -> None: ...


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    images: int
    seconds: float
    labels: list[int] = field(default_factory=list)
    predictions: list[int] = field(default_factory=list)

    @property
    def images_per_sec(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


Normalize = Callable[[torch.Tensor], torch.Tensor]


def _to_device(batch: torch.Tensor, device: torch.device,
               normalize: Normalize | None) -> torch.Tensor:
    batch = batch.to(device, non_blocking=True)
    # Image batches go channels-last (faster convolutions); feature batches are 2-D.
    if batch.dim() == 4:
        batch = batch.contiguous(memory_format=torch.channels_last)
    if batch.dtype == torch.uint8:  # pixels from the loader: normalise here, on the device
        if normalize is None:
            raise ValueError("uint8 image batches need a normalize function")
        batch = normalize(batch)
    return batch


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


@dataclass(frozen=True)
class Precision:
    """Mixed precision on GPUs: bf16 where supported, else fp16 with a gradient scaler."""

    dtype: torch.dtype | None = None  # None = fp32
    scaler: torch.amp.GradScaler | None = None

    @classmethod
    def for_device(cls, device: torch.device) -> Precision:
        if device.type != "cuda":
            return cls()
        if torch.cuda.is_bf16_supported():
            return cls(torch.bfloat16)
        return cls(torch.float16, torch.amp.GradScaler("cuda"))

    @property
    def name(self) -> str:
        if self.dtype is None:
            return "fp32"
        short = {torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]
        return f"{short} autocast" + (
            " + grad scaler" if self.scaler is not None else "")

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            loss.backward()
            optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()


def train_one_epoch(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    loader: DataLoader, device: torch.device, *, epoch: int, epochs: int,
                    log_interval: int, callbacks: list[Callback],
                    set_mode: Callable[[], None] | None = None,
                    precision: Precision = Precision(),
                    normalize: Normalize | None = None) -> EpochStats:
    """``set_mode`` puts the model in train mode (default: all of it; see model.set_train_mode).
    ``normalize`` turns uint8 pixel batches into the model's input (EvalPreprocessing.normalize).
    """
    (set_mode or model.train)()
    for cb in callbacks:
        cb.on_mode("train")
    total_loss, correct, seen = 0.0, 0, 0
    steps = len(loader)
    start = last = time.perf_counter()
    for step, (images, labels) in enumerate(loader, 1):
        data_seconds = time.perf_counter() - last
        images = _to_device(images, device, normalize)
        labels = labels.to(device, non_blocking=True)
        with precision.autocast(device):
            outputs = model(images)
            loss = criterion(outputs, labels)
        optimizer.zero_grad(set_to_none=True)
        precision.step(loss, optimizer)
        batch_loss = loss.item()  # syncs the device, so compute time below is real
        now = time.perf_counter()
        total_loss += batch_loss * labels.size(0)
        correct += (outputs.argmax(1) == labels).sum().item()
        seen += labels.size(0)
        for cb in callbacks:
            cb.on_step_end("train", step, batch_loss, labels.size(0), data_seconds,
                           now - last - data_seconds)
        if step % log_interval == 0 or step == steps:
            elapsed = now - start
            log.info("[train] epoch %d/%d step %d/%d loss=%.4f acc=%.4f %.1f img/s eta %s",
                     epoch, epochs, step, steps, total_loss / seen, correct / seen,
                     seen / elapsed, _format_eta(elapsed / step * (steps - step)))
        last = time.perf_counter()
    seconds = time.perf_counter() - start
    return EpochStats(total_loss / max(seen, 1), correct / max(seen, 1), seen, seconds)


@torch.inference_mode()
def evaluate(model: nn.Module, criterion: nn.Module, loader: DataLoader, device: torch.device,
             callbacks: list[Callback], precision: Precision = Precision(),
             normalize: Normalize | None = None) -> EpochStats:
    model.eval()
    for cb in callbacks:
        cb.on_mode("eval")
    total_loss, seen = 0.0, 0
    labels_all: list[int] = []
    preds_all: list[int] = []
    start = last = time.perf_counter()
    for step, (images, labels) in enumerate(loader, 1):
        data_seconds = time.perf_counter() - last
        images = _to_device(images, device, normalize)
        labels = labels.to(device, non_blocking=True)
        with precision.autocast(device):
            outputs = model(images)
            loss = criterion(outputs.float(), labels)
        batch_loss = loss.item()
        total_loss += batch_loss * labels.size(0)
        seen += labels.size(0)
        labels_all += labels.tolist()
        preds_all += outputs.argmax(1).tolist()
        now = time.perf_counter()
        for cb in callbacks:
            cb.on_step_end("eval", step, batch_loss, labels.size(0), data_seconds,
                           now - last - data_seconds)
        last = time.perf_counter()
    correct = sum(int(a == b) for a, b in zip(labels_all, preds_all, strict=True))
    return EpochStats(total_loss / max(seen, 1), correct / max(seen, 1), seen,
                      time.perf_counter() - start, labels_all, preds_all)
