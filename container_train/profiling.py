"""Our own debug output, for every account (it does not need SageMaker Debugger).

Callbacks on the training loop's seam (engine.Callback):

* :class:`StepRecorder`: every step's time split into waiting for data vs compute, images/s
  and memory -> ``step_times.csv``; per-mode medians and totals -> ``step_summary.json``
  (report.html and the findings read both);
* :class:`TensorBoardLogger`: scalars for TensorBoard under the job's TensorBoard dir
  (``/opt/ml/output/tensorboard`` under SageMaker, the folder its TensorBoardOutputConfig
  uploads);
* :class:`TorchProfiler`: a torch.profiler trace of a few training steps when the
  ``profile-steps`` hyperparameter asks for one -> ``profiler/*.pt.trace.json`` (Perfetto,
  chrome://tracing, or TensorBoard's PyTorch profiler plugin).

:func:`make_callbacks` builds the list for a job: only the main process (rank 0) writes.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import statistics
from pathlib import Path
from typing import Any

import torch
from torch import nn

from container_train import debugger
from container_train.config import JobConfig
from container_train.engine import Callback

log = logging.getLogger(__name__)

STEP_TIMES_FILE = "step_times.csv"
STEP_SUMMARY_FILE = "step_summary.json"
PROFILER_DIR = "profiler"
STEP_COLUMNS = ("mode", "epoch", "step", "batch_size", "loss", "data_seconds",
                "compute_seconds", "images_per_sec", "rss_mb", "device_mem_mb")
_MB = 1024 * 1024


def _page_size() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 4096


_PAGE = _page_size()


def rss_mb() -> float | None:
    """Resident memory of this process now (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE / _MB
    except (OSError, ValueError, IndexError):
        return None


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize_steps(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per mode: step counts, medians, p90 and the share of time spent waiting for data.

    The first step of each pass is left out of the medians and shares (when there are others):
    it includes starting the DataLoader workers and warming up the device.
    """
    out: dict[str, Any] = {}
    for mode in ("train", "eval"):
        mine = [r for r in rows if r["mode"] == mode]
        if not mine:
            continue
        steady = [r for r in mine if r["step"] > 1] or mine
        data = [r["data_seconds"] for r in steady]
        compute = [r["compute_seconds"] for r in steady]
        total = [d + c for d, c in zip(data, compute, strict=True)]
        images = sum(r["batch_size"] for r in steady)
        out[mode] = {
            "steps": len(mine),
            "steps_measured": len(steady),
            "images": sum(r["batch_size"] for r in mine),
            "median_data_seconds": statistics.median(data),
            "median_compute_seconds": statistics.median(compute),
            "median_step_seconds": statistics.median(total),
            "p90_step_seconds": _quantile(total, 0.9),
            "data_fraction": sum(data) / sum(total) if sum(total) > 0 else 0.0,
            "images_per_sec": images / sum(total) if sum(total) > 0 else 0.0,
        }
    return out


class StepRecorder(Callback):
    """Per-step timings and memory -> step_times.csv (flushed every epoch) and
    step_summary.json (at the end of training)."""

    def __init__(self, output_dir: Path, *, device: torch.device, batch_size: int,
                 num_workers: int, debugger_configured: bool = False):
        self.output_dir = output_dir
        self.device = device
        self.context = {"device": str(device), "batch_size": batch_size,
                        "num_workers": num_workers, "cpu_count": cpu_count(),
                        "debugger_configured": debugger_configured}
        self.rows: list[dict[str, Any]] = []
        self._pending: list[dict[str, Any]] = []  # this epoch's rows, numbered at its end
        self._file: Any = None
        self._writer: Any = None
        self._cuda = device.type == "cuda" and torch.cuda.is_available()
        self._device_peak_mb = 0.0

    def on_train_begin(self, model: nn.Module, criterion: nn.Module) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.output_dir / STEP_TIMES_FILE, "w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=STEP_COLUMNS)
        self._writer.writeheader()
        if self._cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def on_step_end(self, mode: str, step: int, loss: float, batch_size: int,
                    data_seconds: float, compute_seconds: float) -> None:
        device_mb = None
        if self._cuda:
            device_mb = torch.cuda.max_memory_allocated(self.device) / _MB
            self._device_peak_mb = max(self._device_peak_mb, device_mb)
            torch.cuda.reset_peak_memory_stats(self.device)
        seconds = data_seconds + compute_seconds
        row = {"mode": mode, "epoch": None, "step": step, "batch_size": batch_size,
               "loss": loss, "data_seconds": data_seconds, "compute_seconds": compute_seconds,
               "images_per_sec": batch_size / seconds if seconds > 0 else 0.0,
               "rss_mb": rss_mb(), "device_mem_mb": device_mb}
        self.rows.append(row)
        self._pending.append(row)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self._write_pending(epoch)

    def _write_pending(self, epoch: int | None) -> None:
        for row in self._pending:
            row["epoch"] = epoch
            if self._writer is not None:
                self._writer.writerow(row)
        self._pending = []
        if self._file is not None:
            self._file.flush()

    def summary(self) -> dict[str, Any]:
        rss = [r["rss_mb"] for r in self.rows if r["rss_mb"] is not None]
        memory: dict[str, Any] = {"peak_rss_mb": max(rss) if rss else None}
        if self._cuda:
            memory["device_peak_mb"] = self._device_peak_mb
            memory["device_total_mb"] = (
                torch.cuda.get_device_properties(self.device).total_memory / _MB)
        return {**self.context, "modes": summarize_steps(self.rows), "memory": memory,
                "smdebug_imported": debugger.smdebug_imported()}

    def on_train_end(self) -> None:
        self._write_pending(None)  # steps of an epoch cut short, if any
        if self._file is not None:
            self._file.close()
            self._file = self._writer = None
        (self.output_dir / STEP_SUMMARY_FILE).write_text(
            json.dumps(self.summary(), indent=2) + "\n")


class TensorBoardLogger(Callback):
    """Scalars for TensorBoard: per training step (loss, data/compute seconds, images/s,
    memory) and per epoch (train vs valid loss and accuracy, epoch time)."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.writer: Any = None
        self.global_step = 0

    def on_train_begin(self, model: nn.Module, criterion: nn.Module) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # the tensorboard package is missing
            log.warning("no TensorBoard scalars: %s", exc)
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        log.info("TensorBoard scalars go to %s", self.log_dir)

    def on_step_end(self, mode: str, step: int, loss: float, batch_size: int,
                    data_seconds: float, compute_seconds: float) -> None:
        if self.writer is None or mode != "train":
            return
        self.global_step += 1
        seconds = data_seconds + compute_seconds
        scalars = {"step/loss": loss, "step/data_seconds": data_seconds,
                   "step/compute_seconds": compute_seconds,
                   "step/images_per_sec": batch_size / seconds if seconds > 0 else 0.0}
        memory = rss_mb()
        if memory is not None:
            scalars["memory/rss_mb"] = memory
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, self.global_step)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.writer is None:
            return
        for key, value in metrics.items():
            split, _, name = key.partition("_")
            tag = f"{name}/{split}" if split in ("train", "valid") else f"epoch/{key}"
            self.writer.add_scalar(tag, value, epoch)
        self.writer.flush()

    def on_train_end(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class TorchProfiler(Callback):
    """A torch.profiler trace of ``steps`` training steps of the first epoch.

    Step 1 is skipped (cold start) and step 2 warms the profiler up, so steps 3 .. steps + 2
    are recorded; the trace is written when they are done, or when the first epoch ends.
    """

    def __init__(self, trace_dir: Path, steps: int):
        self.trace_dir = trace_dir
        self.steps = steps
        self.profiler: Any = None

    def on_train_begin(self, model: nn.Module, criterion: nn.Module) -> None:
        from torch.profiler import (
            ProfilerActivity,
            profile,
            schedule,
            tensorboard_trace_handler,
        )

        activities = [ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(ProfilerActivity.CUDA)
        self.trace_dir.mkdir(parents=True, exist_ok=True)
        self.profiler = profile(
            activities=activities,
            schedule=schedule(skip_first=1, wait=0, warmup=1, active=self.steps, repeat=1),
            on_trace_ready=tensorboard_trace_handler(str(self.trace_dir)),
            record_shapes=True, profile_memory=True)
        self.profiler.start()

    def on_step_end(self, mode: str, step: int, loss: float, batch_size: int,
                    data_seconds: float, compute_seconds: float) -> None:
        if self.profiler is not None and mode == "train":
            self.profiler.step()

    def on_mode(self, mode: str) -> None:
        if mode == "eval":
            self._stop()

    def on_train_end(self) -> None:
        self._stop()

    def _stop(self) -> None:
        if self.profiler is None:
            return
        self.profiler.stop()
        self.profiler = None
        traces = sorted(self.trace_dir.glob("*.pt.trace.json"))
        log.info("torch.profiler trace: %s", ", ".join(map(str, traces)) or "none written")


def make_callbacks(config: JobConfig, *, is_main: bool, device: torch.device,
                   num_workers: int) -> list[Callback]:
    """Everything that observes a job: the Debugger hook (when SageMaker asked for one), step
    timings, TensorBoard scalars and the optional torch.profiler trace. ``num_workers``: the
    DataLoader workers the job runs with, recorded in step_summary.json. Only the main process
    writes: other ranks get an empty list."""
    if not is_main:
        return []
    hp = config.hyperparameters
    callbacks: list[Callback] = []
    hook = debugger.make_debugger_callback()
    if hook is not None:
        callbacks.append(hook)
    callbacks.append(StepRecorder(config.output_data_dir, device=device,
                                  batch_size=hp.batch_size, num_workers=num_workers,
                                  debugger_configured=hook is not None))
    tb_dir = config.tensorboard_dir or config.output_data_dir / "tensorboard"
    callbacks.append(TensorBoardLogger(tb_dir))
    if hp.profile_steps > 0:
        callbacks.append(TorchProfiler(config.output_data_dir / PROFILER_DIR, hp.profile_steps))
    return callbacks

