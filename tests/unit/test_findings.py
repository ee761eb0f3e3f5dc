"""Every findings rule: inputs that trigger it, inputs that do not, and its threshold's edge."""

from __future__ import annotations

import dataclasses
import math

import pytest

from container_train import findings
from container_train.findings import THRESHOLDS, RunFacts, Thresholds
from container_train.profiling import summarize_steps


def _history(*pairs: tuple[float, float]) -> list[dict[str, float]]:
    return [{"epoch": i, "train_loss": t, "valid_loss": v, "train_accuracy": 0.5,
             "valid_accuracy": 0.5} for i, (t, v) in enumerate(pairs, 1)]


def _timed(fraction: float, *, steps: int = 20, workers: int = 2, cpus: int = 8) -> RunFacts:
    return RunFacts(train_steps_measured=steps, train_data_fraction=fraction,
                    median_data_seconds=fraction, median_compute_seconds=1 - fraction,
                    num_workers=workers, cpu_count=cpus, batch_size=32)


# --- data loading is the bottleneck -------------------------------------------------------

def test_data_bottleneck_fires_when_steps_wait_for_data_and_suggests_workers():
    found = findings.data_loading_bottleneck(_timed(0.6, workers=2, cpus=8))
    assert found is not None and found.rule == "data_loading_bottleneck"
    assert "60%" in found.message and "num-workers is 2" in found.advice


def test_data_bottleneck_with_every_cpu_busy_gives_other_advice():
    found = findings.data_loading_bottleneck(_timed(0.6, workers=8, cpus=8))
    assert found is not None and "num-workers" not in found.advice


@pytest.mark.parametrize("facts", [
    _timed(0.05),                                   # compute-bound
    _timed(THRESHOLDS.data_wait_fraction - 0.01),   # just under the threshold
    _timed(0.9, steps=THRESHOLDS.min_timed_steps - 1),  # too few steps to judge
    RunFacts(),                                     # no timings recorded
])
def test_data_bottleneck_stays_quiet(facts):
    assert findings.data_loading_bottleneck(facts) is None


def test_data_bottleneck_threshold_is_the_one_in_thresholds():
    facts = _timed(THRESHOLDS.data_wait_fraction)
    assert findings.data_loading_bottleneck(facts) is not None
    stricter = dataclasses.replace(THRESHOLDS, data_wait_fraction=0.5)
    assert findings.data_loading_bottleneck(facts, stricter) is None


# --- the batch is too small for the device ------------------------------------------------

def _gpu(peak_mb: float, total_mb: float = 80_000, device: str = "cuda:0") -> RunFacts:
    return RunFacts(device=device, device_peak_mb=peak_mb, device_total_mb=total_mb,
                    batch_size=16)


def test_small_batch_fires_when_gpu_memory_is_mostly_unused():
    found = findings.batch_too_small(_gpu(4_000))
    assert found is not None and found.rule == "batch_too_small"
    assert "batch of 16" in found.message and "batch-size" in found.advice


@pytest.mark.parametrize("facts", [
    _gpu(60_000),                                               # well used
    _gpu(THRESHOLDS.low_device_memory_fraction * 80_000),       # exactly at the threshold
    _gpu(1_000, device="cpu"),                                  # not a GPU: no judgement
    RunFacts(device="cuda:0"),                                  # memory not recorded
])
def test_small_batch_stays_quiet(facts):
    assert findings.batch_too_small(facts) is None


# --- overfitting --------------------------------------------------------------------------

def test_overfitting_fires_when_train_falls_and_valid_rises():
    facts = RunFacts(history=_history((1.0, 0.9), (0.6, 0.7), (0.3, 0.8), (0.1, 1.0)))
    found = findings.overfitting(facts)
    assert found is not None and found.rule == "overfitting"
    assert "epoch 2" in found.message and "0.700 to 1.000" in found.message


@pytest.mark.parametrize("history", [
    _history((1.0, 0.9), (0.6, 0.7), (0.4, 0.6), (0.3, 0.5)),    # both still falling
    _history((1.0, 0.9), (0.6, 0.7), (0.5, 0.72), (0.45, 0.73)),  # valid flat within 10 %
    _history((1.0, 0.5), (1.1, 0.8), (1.2, 1.0)),                # train rises too: not it
    _history((1.0, 0.9), (0.2, 2.0)),                            # too few epochs to judge
    [],
])
def test_overfitting_stays_quiet(history):
    assert findings.overfitting(RunFacts(history=history)) is None


# --- underfitting -------------------------------------------------------------------------

def test_underfitting_fires_when_both_losses_stay_near_chance():
    chance = math.log(5)
    facts = RunFacts(history=_history((chance, chance), (0.9 * chance, 0.95 * chance)),
                     num_classes=5)
    found = findings.underfitting(facts)
    assert found is not None and found.rule == "underfitting" and "ln 5" in found.message


@pytest.mark.parametrize(("history", "classes"), [
    (_history((1.2, 1.3), (0.3, 0.4)), 5),   # learned well
    (_history((1.5, 0.5)), 5),               # valid is low (train still augmenting)
    (_history((2.0, 2.0)), 1),               # one class: no chance level
    ([], 5),
])
def test_underfitting_stays_quiet(history, classes):
    assert findings.underfitting(RunFacts(history=history, num_classes=classes)) is None


def test_underfitting_threshold_edge():
    limit = THRESHOLDS.underfit_loss_fraction * math.log(4)
    at = RunFacts(history=_history((limit, limit)), num_classes=4)
    below = RunFacts(history=_history((limit * 0.99, limit)), num_classes=4)
    assert findings.underfitting(at) is not None
    assert findings.underfitting(below) is None


# --- loss not decreasing ------------------------------------------------------------------

def test_flat_loss_fires():
    found = findings.loss_not_decreasing(RunFacts(train_step_losses=[1.6, 1.7, 1.5, 1.6] * 5))
    assert found is not None and found.rule == "loss_not_decreasing"
    assert "20 training steps" in found.message


def test_diverging_loss_fires():
    losses = [1.0 + 0.5 * i for i in range(20)] + [math.nan]
    assert findings.loss_not_decreasing(RunFacts(train_step_losses=losses)) is not None


@pytest.mark.parametrize("losses", [
    [2.0 - 0.05 * i for i in range(30)],         # falling
    [1.6, 1.7, 1.5, 1.6] * 2,                    # too few steps to judge
    [],
])
def test_loss_not_decreasing_stays_quiet(losses):
    assert findings.loss_not_decreasing(RunFacts(train_step_losses=losses)) is None


# --- all rules together -------------------------------------------------------------------

def test_diagnose_runs_every_rule_in_order_and_a_healthy_run_has_no_findings():
    healthy = RunFacts(history=_history((1.0, 0.9), (0.5, 0.5), (0.3, 0.35)), num_classes=5,
                       train_step_losses=[2.0 - 0.05 * i for i in range(30)],
                       train_steps_measured=30, train_data_fraction=0.05, device="cuda:0",
                       device_peak_mb=50_000, device_total_mb=80_000)
    assert findings.diagnose(healthy) == []
    sick = dataclasses.replace(healthy, train_data_fraction=0.8, device_peak_mb=1_000,
                               train_step_losses=[1.6] * 30,
                               history=_history((1.6, 1.6), (1.59, 1.6), (1.58, 1.61)))
    assert [f.rule for f in findings.diagnose(sick)] == [
        "data_loading_bottleneck", "batch_too_small", "underfitting", "loss_not_decreasing"]


def test_thresholds_live_in_one_frozen_table():
    assert isinstance(THRESHOLDS, Thresholds)
    with pytest.raises(dataclasses.FrozenInstanceError):
        THRESHOLDS.data_wait_fraction = 0.9  # type: ignore[misc]


def test_facts_from_output_files():
    summary = {"device": "cuda:0", "batch_size": 64, "num_workers": 4, "cpu_count": 8,
               "modes": {"train": {"steps_measured": 9, "data_fraction": 0.4,
                                   "median_data_seconds": 0.2,
                                   "median_compute_seconds": 0.3}},
               "memory": {"device_peak_mb": 1000.0, "device_total_mb": 80000.0}}
    facts = RunFacts.from_outputs(metrics={"history": _history((1.0, 1.0))},
                                  step_summary=summary, train_step_losses=[1.0, 0.9],
                                  num_classes=3)
    assert (facts.batch_size, facts.num_workers, facts.cpu_count) == (64, 4, 8)
    assert facts.train_data_fraction == 0.4 and facts.device_total_mb == 80000.0
    assert len(facts.history) == 1 and facts.num_classes == 3
    empty = RunFacts.from_outputs(metrics=None, step_summary=None, train_step_losses=[],
                                  num_classes=0)
    assert findings.diagnose(empty) == []


# --- the step summary the timing rules read ------------------------------------------------

def test_summarize_steps_leaves_out_each_passes_first_step():
    rows = [{"mode": "train", "step": s, "batch_size": 10, "data_seconds": d,
             "compute_seconds": 0.1} for s, d in ((1, 5.0), (2, 0.1), (3, 0.1), (1, 5.0),
                                                   (2, 0.1))]
    rows.append({"mode": "eval", "step": 1, "batch_size": 4, "data_seconds": 0.0,
                 "compute_seconds": 0.2})
    summary = summarize_steps(rows)
    train = summary["train"]
    assert train["steps"] == 5 and train["steps_measured"] == 3 and train["images"] == 50
    assert train["data_fraction"] == pytest.approx(0.5)
    assert train["images_per_sec"] == pytest.approx(30 / 0.6)
    assert summary["eval"]["steps_measured"] == 1  # a lone first step is kept
