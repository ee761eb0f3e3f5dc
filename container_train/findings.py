"""Plain-language findings about a finished run, in the spirit of SageMaker's profiler report.

Each finding comes from one rule: a small function of :class:`RunFacts` (what the run
measured) that returns a :class:`Finding` or None. Every threshold is in :data:`THRESHOLDS`,
and tests/unit/test_findings.py feeds each rule inputs that trigger it and inputs that do not.
No torch here: the rules are plain arithmetic on the files of the output data dir.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Thresholds:
    """Every number the rules compare against, in one place."""

    # Data loading is the bottleneck: share of training-step time spent waiting for a batch.
    data_wait_fraction: float = 0.30
    # Timing rules need this many measured training steps (the first of each epoch excluded).
    min_timed_steps: int = 5
    # The batch is too small for the device: peak GPU memory below this share of the device.
    low_device_memory_fraction: float = 0.30
    # Overfitting: the last valid loss is this much (relative) above the best one, while the
    # train loss kept falling after the best epoch; needs at least overfit_min_epochs epochs.
    overfit_valid_rise: float = 0.10
    overfit_min_epochs: int = 3
    # Underfitting: train and best valid loss both stay above this share of the loss of
    # guessing uniformly among the classes (ln of the number of classes).
    underfit_loss_fraction: float = 0.60
    # Loss not decreasing: the mean train loss of the last `loss_window` share of the training
    # steps is not at least `min_loss_drop` (relative) below that of the first share.
    loss_window: float = 0.20
    min_loss_drop: float = 0.05
    min_loss_steps: int = 10


THRESHOLDS = Thresholds()


@dataclass(frozen=True)
class Finding:
    rule: str  # stable identifier, e.g. "data_loading_bottleneck"
    title: str
    message: str  # what was measured, in plain words
    advice: str  # what to change

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclass
class RunFacts:
    """What a run measured; each field may be empty when the run did not record it."""

    history: list[dict[str, float]] = field(default_factory=list)  # metrics.json "history"
    train_step_losses: list[float] = field(default_factory=list)
    num_classes: int = 0
    batch_size: int | None = None
    num_workers: int | None = None
    cpu_count: int | None = None
    device: str = "cpu"
    train_steps_measured: int = 0
    train_data_fraction: float | None = None
    median_data_seconds: float | None = None
    median_compute_seconds: float | None = None
    device_peak_mb: float | None = None
    device_total_mb: float | None = None

    @classmethod
    def from_outputs(cls, *, metrics: dict[str, Any] | None, step_summary: dict[str, Any] | None,
                     train_step_losses: list[float], num_classes: int) -> RunFacts:
        summary = step_summary or {}
        train = summary.get("modes", {}).get("train", {})
        memory = summary.get("memory", {})
        return cls(
            history=list((metrics or {}).get("history", [])),
            train_step_losses=list(train_step_losses),
            num_classes=num_classes,
            batch_size=summary.get("batch_size"),
            num_workers=summary.get("num_workers"),
            cpu_count=summary.get("cpu_count"),
            device=summary.get("device", "cpu"),
            train_steps_measured=train.get("steps_measured", 0),
            train_data_fraction=train.get("data_fraction"),
            median_data_seconds=train.get("median_data_seconds"),
            median_compute_seconds=train.get("median_compute_seconds"),
            device_peak_mb=memory.get("device_peak_mb"),
            device_total_mb=memory.get("device_total_mb"),
        )


def _ms(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds * 1000:.0f} ms"


def data_loading_bottleneck(f: RunFacts, t: Thresholds = THRESHOLDS) -> Finding | None:
    if f.train_data_fraction is None or f.train_steps_measured < t.min_timed_steps:
        return None
    if f.train_data_fraction < t.data_wait_fraction:
        return None
    workers, cpus = f.num_workers, f.cpu_count
    if workers is not None and cpus is not None and workers < cpus:
        advice = (f"Add DataLoader workers: num-workers is {workers} on a machine with {cpus} "
                  f"CPUs (try num-workers={min(cpus, max(2 * workers, workers + 2))}).")
    else:
        advice = ("Every CPU already loads data: use an instance with more CPUs per GPU, "
                  "store images pre-resized near the training size, or use FastFile input.")
    return Finding(
        "data_loading_bottleneck", "Data loading is the bottleneck",
        f"{f.train_data_fraction:.0%} of each training step was spent waiting for the next "
        f"batch (median wait {_ms(f.median_data_seconds)}, median compute "
        f"{_ms(f.median_compute_seconds)}); the device sat idle meanwhile.", advice)


def batch_too_small(f: RunFacts, t: Thresholds = THRESHOLDS) -> Finding | None:
    if not f.device.startswith("cuda") or not f.device_peak_mb or not f.device_total_mb:
        return None  # only GPU memory says how much room the device has
    used = f.device_peak_mb / f.device_total_mb
    if used >= t.low_device_memory_fraction:
        return None
    return Finding(
        "batch_too_small", "The batch is too small for the device",
        f"A batch of {f.batch_size} images used at most {f.device_peak_mb / 1024:.1f} GiB, "
        f"{used:.0%} of the GPU's {f.device_total_mb / 1024:.0f} GiB.",
        "Raise batch-size (the GPU works faster on bigger batches) and scale lr with it; "
        "or use a smaller, cheaper instance type.")


def overfitting(f: RunFacts, t: Thresholds = THRESHOLDS) -> Finding | None:
    h = f.history
    if len(h) < t.overfit_min_epochs:
        return None
    best = min(range(len(h)), key=lambda i: h[i]["valid_loss"])
    last = h[-1]
    rise_limit = h[best]["valid_loss"] * (1 + t.overfit_valid_rise)
    if best == len(h) - 1 or last["valid_loss"] < rise_limit:
        return None
    if last["train_loss"] >= h[best]["train_loss"]:
        return None  # train loss did not keep falling: not the overfitting pattern
    return Finding(
        "overfitting", "Training loss falls while valid loss rises (overfitting)",
        f"After epoch {h[best]['epoch']:.0f} the train loss fell from "
        f"{h[best]['train_loss']:.3f} to {last['train_loss']:.3f} while the valid loss rose "
        f"from {h[best]['valid_loss']:.3f} to {last['valid_loss']:.3f}. The artifact keeps "
        f"the weights of epoch {h[best]['epoch']:.0f} (best valid loss).",
        "Regularize: keep augment on, raise weight-decay, train fewer layers "
        "(trainable-layers), add data, or stop earlier (early-stopping-patience).")


def underfitting(f: RunFacts, t: Thresholds = THRESHOLDS) -> Finding | None:
    if not f.history or f.num_classes < 2:
        return None
    chance = math.log(f.num_classes)
    limit = t.underfit_loss_fraction * chance
    train = f.history[-1]["train_loss"]
    valid = min(h["valid_loss"] for h in f.history)
    if train < limit or valid < limit:
        return None
    return Finding(
        "underfitting", "Both losses stay high (underfitting)",
        f"The final train loss {train:.3f} and the best valid loss {valid:.3f} are both above "
        f"{t.underfit_loss_fraction:.0%} of the loss of guessing among {f.num_classes} classes "
        f"(ln {f.num_classes} = {chance:.3f}).",
        "Give the model more capacity or time: more epochs, a higher lr, more trainable "
        "layers (trainable-layers), or ImageNet weights (weights=imagenet).")


def loss_not_decreasing(f: RunFacts, t: Thresholds = THRESHOLDS) -> Finding | None:
    losses = [x for x in f.train_step_losses if math.isfinite(x)]
    if len(losses) < t.min_loss_steps:
        return None
    n = max(1, int(len(losses) * t.loss_window))
    first, last = sum(losses[:n]) / n, sum(losses[-n:]) / n
    if last <= first * (1 - t.min_loss_drop):
        return None
    return Finding(
        "loss_not_decreasing", "Training loss is not decreasing",
        f"Over {len(losses)} training steps the loss went from {first:.3f} (mean of the first "
        f"{n} steps) to {last:.3f} (mean of the last {n}).",
        "Check lr (too high diverges, too low stalls: try 10x up and down), that the labels "
        "match the images, and that some layers train (trainable-layers).")


RULES: tuple[Callable[[RunFacts, Thresholds], Finding | None], ...] = (
    data_loading_bottleneck, batch_too_small, overfitting, underfitting, loss_not_decreasing,
)


def diagnose(facts: RunFacts, thresholds: Thresholds = THRESHOLDS) -> list[Finding]:
    """Every rule that fires, in RULES order."""
    return [found for rule in RULES if (found := rule(facts, thresholds)) is not None]
