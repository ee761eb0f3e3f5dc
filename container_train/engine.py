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

from container_train.errors import TrainingError
from container_train.gpu_decode import EncodedBatch

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
    logits: list[torch.Tensor] = field(default_factory=list)  # per batch, fp32 on the CPU

    @property
    def images_per_sec(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


Normalize = Callable[[torch.Tensor], torch.Tensor]


def _to_device(batch: torch.Tensor | EncodedBatch, device: torch.device,
               normalize: Normalize | None) -> torch.Tensor:
    if isinstance(batch, EncodedBatch):  # file bytes (gpu-decode): decoded on the device
        return batch.to_device(device)
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


NATIVE_BF16 = (8, 0)  # compute capability with bf16 in cuDNN's convolutions (Ampere on)


def _gpu(device: torch.device) -> str:
    major, minor = torch.cuda.get_device_capability(device)
    return f"{torch.cuda.get_device_name(device)}, compute capability {major}.{minor}"


def describe_device(device: torch.device) -> str:
    """For the log: ``cpu`` or ``cuda:0 (NVIDIA T4, compute capability 7.5)``."""
    return f"{device} ({_gpu(device)})" if device.type == "cuda" else str(device)


@dataclass(frozen=True)
class Precision:
    """What the training steps compute in (the ``precision`` hyperparameter).

    auto: bf16 autocast where the GPU has bf16 natively (compute capability >= 8.0); below
    that, torch reports bf16 as supported but emulates it (no cuDNN bf16 convolutions), so
    fp16 autocast with a gradient scaler; fp32 on CPU.
    """

    dtype: torch.dtype | None = None  # None = fp32
    scaler: torch.amp.GradScaler | None = None

    @classmethod
    def for_device(cls, device: torch.device, requested: str = "auto") -> Precision:
        """Raises TrainingError (one line) when the device cannot do what was asked."""
        if device.type != "cuda":
            if requested in ("fp16", "bf16"):
                raise TrainingError(f"precision={requested} needs a CUDA GPU and this job runs "
                                    f"on {device.type}: use precision=auto or fp32")
            return cls()
        native_bf16 = torch.cuda.get_device_capability(device) >= NATIVE_BF16
        if requested == "auto":
            requested = "bf16" if native_bf16 else "fp16"
        if requested == "bf16" and not native_bf16:
            raise TrainingError(
                f"precision=bf16 needs a GPU with compute capability 8.0 or higher (native "
                f"bf16) and this one is {_gpu(device)}: use precision=fp16 or auto")
        if requested == "bf16":
            return cls(torch.bfloat16)
        if requested == "fp16":
            return cls(torch.float16, torch.amp.GradScaler("cuda"))
        return cls()

    @property
    def short_name(self) -> str:
        """fp32, fp16 or bf16: what the manifest records."""
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    @property
    def name(self) -> str:
        if self.dtype is None:
            return "fp32"
        return f"{self.short_name} autocast" + (
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


@dataclass
class EpochProgress:
    """How far a training epoch got: a mid-epoch checkpoint stores it, a resumed epoch starts
    from it (the sums continue, so the epoch's metric line equals an uninterrupted one)."""

    steps: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0

    def stats(self) -> EpochStats:
        seen = max(self.seen, 1)
        return EpochStats(self.loss_sum / seen, self.correct / seen, self.seen, self.seconds)


def _never() -> bool:
    return False


def train_one_epoch(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    loader: DataLoader, device: torch.device, *, epoch: int, epochs: int,
                    log_interval: int, callbacks: list[Callback],
                    set_mode: Callable[[], None] | None = None,
                    precision: Precision = Precision(),
                    normalize: Normalize | None = None,
                    progress: EpochProgress | None = None,
                    should_stop: Callable[[], bool] = _never) -> EpochStats | None:
    """``set_mode`` puts the model in train mode (default: all of it; see model.set_train_mode).
    ``normalize`` turns uint8 pixel batches into the model's input (EvalPreprocessing.normalize).
    ``progress`` is updated after every step; a resumed epoch passes what was saved and a
    ``loader`` over the remaining batches. When ``should_stop()`` turns true after a step,
    returns None (``progress`` says where it stopped).
    """
    progress = progress if progress is not None else EpochProgress()
    (set_mode or model.train)()
    for cb in callbacks:
        cb.on_mode("train")
    steps = progress.steps + len(loader)
    start = last = time.perf_counter() - progress.seconds
    for step, (images, labels) in enumerate(loader, progress.steps + 1):
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
        progress.loss_sum += batch_loss * labels.size(0)
        progress.correct += (outputs.argmax(1) == labels).sum().item()
        progress.seen += labels.size(0)
        progress.steps, progress.seconds = step, now - start
        for cb in callbacks:
            cb.on_step_end("train", step, batch_loss, labels.size(0), data_seconds,
                           now - last - data_seconds)
        if step % log_interval == 0 or step == steps:
            elapsed = now - start
            log.info("[train] epoch %d/%d step %d/%d loss=%.4f acc=%.4f %.1f img/s eta %s",
                     epoch, epochs, step, steps, progress.loss_sum / progress.seen,
                     progress.correct / progress.seen, progress.seen / elapsed,
                     _format_eta(elapsed / step * (steps - step)))
        if should_stop():
            log.info("[train] epoch %d/%d stopped after step %d/%d", epoch, epochs, step, steps)
            return None
        last = time.perf_counter()
    progress.seconds = time.perf_counter() - start
    return progress.stats()


@torch.inference_mode()
def eval_pass(model: nn.Module, criterion: nn.Module, loader: DataLoader, device: torch.device,
              callbacks: list[Callback], precision: Precision = Precision(),
              normalize: Normalize | None = None,
              should_stop: Callable[[], bool] = _never,
              keep_logits: bool = False) -> EpochStats | None:
    """One pass over ``loader`` in eval mode: loss, accuracy, and every label and prediction
    (and, ``keep_logits``, every logit row: calibration fits on them).
    None when ``should_stop()`` turned true (checked after every batch)."""
    model.eval()
    for cb in callbacks:
        cb.on_mode("eval")
    total_loss, seen = 0.0, 0
    labels_all: list[int] = []
    preds_all: list[int] = []
    logits_all: list[torch.Tensor] = []
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
        if keep_logits:
            logits_all.append(outputs.detach().float().cpu())
        now = time.perf_counter()
        for cb in callbacks:
            cb.on_step_end("eval", step, batch_loss, labels.size(0), data_seconds,
                           now - last - data_seconds)
        if should_stop():
            return None
        last = time.perf_counter()
    correct = sum(int(a == b) for a, b in zip(labels_all, preds_all, strict=True))
    return EpochStats(total_loss / max(seen, 1), correct / max(seen, 1), seen,
                      time.perf_counter() - start, labels_all, preds_all, logits_all)
