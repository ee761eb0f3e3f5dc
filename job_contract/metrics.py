"""The metric lines the training job prints and the regexes SageMaker reads them with.

One definition: :func:`format_metric_line` writes ``key=value`` pairs for the keys in
``METRIC_KEYS`` and ``METRIC_DEFINITIONS`` is generated from the same table, so the two cannot
drift. The drivers import ``METRIC_DEFINITIONS`` and ``OBJECTIVES`` from here (no torch).

Per epoch::

    #metrics epoch=3 train_loss=0.512300 train_accuracy=0.810000 valid_loss=... \
valid_accuracy=... epoch_time=12.34 images_per_sec=45.60

and once at the end, for the weights actually kept (the best valid loss), so that the last
value SageMaker sees for ``valid:*`` is the one of the model in the artifact::

    #metrics final best_epoch=3 valid_loss=... valid_accuracy=... test_loss=... test_accuracy=...
"""

from __future__ import annotations

import re

LINE_PREFIX = "#metrics"
NUMBER = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"

# key in the log line -> SageMaker metric name
METRIC_KEYS: dict[str, str] = {
    "train_loss": "train:loss",
    "train_accuracy": "train:accuracy",
    "valid_loss": "valid:loss",
    "valid_accuracy": "valid:accuracy",
    "test_loss": "test:loss",
    "test_accuracy": "test:accuracy",
    "epoch_time": "epoch:seconds",
    "images_per_sec": "train:images_per_sec",
    "best_epoch": "best:epoch",
}

METRIC_DEFINITIONS: list[dict[str, str]] = [
    {"Name": name, "Regex": rf"\b{key}={NUMBER}"} for key, name in METRIC_KEYS.items()
]

# Tuning objectives and their direction, in SageMaker's words.
OBJECTIVES: dict[str, str] = {"valid:loss": "Minimize", "valid:accuracy": "Maximize"}
DEFAULT_OBJECTIVE = "valid:accuracy"

assert len(METRIC_DEFINITIONS) <= 40, "SageMaker accepts at most 40 metric definitions"
assert set(OBJECTIVES) <= set(METRIC_KEYS.values())


def _format(value: float | int) -> str:
    if isinstance(value, int):
        return str(value)
    return f"{value:.6f}"


def format_metric_line(values: dict[str, float | int], tag: str = "") -> str:
    """One log line of ``key=value`` pairs; unknown keys are a programming error."""
    unknown = set(values) - set(METRIC_KEYS)
    if unknown:
        raise KeyError(f"not in METRIC_KEYS: {sorted(unknown)}")
    pairs = " ".join(f"{k}={_format(v)}" for k, v in values.items())
    return f"{LINE_PREFIX} {tag + ' ' if tag else ''}{pairs}"


def parse_log(text: str) -> dict[str, list[float]]:
    """Apply METRIC_DEFINITIONS to a log the way SageMaker does: every match, in order."""
    found: dict[str, list[float]] = {}
    for line in text.splitlines():
        for definition in METRIC_DEFINITIONS:
            for match in re.finditer(definition["Regex"], line):
                found.setdefault(definition["Name"], []).append(float(match.group(1)))
    return found
