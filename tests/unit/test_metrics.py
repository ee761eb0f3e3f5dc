"""The metric line format and the SageMaker regexes are one definition."""

import re

import pytest

from job_contract.metrics import (
    METRIC_DEFINITIONS,
    METRIC_KEYS,
    OBJECTIVES,
    format_metric_line,
    parse_log,
)


def test_every_key_round_trips_through_its_regex():
    values = {key: (7 if key == "best_epoch" else 0.1 + i / 7) for i, key in enumerate(METRIC_KEYS)}
    parsed = parse_log(format_metric_line(values))
    for key, name in METRIC_KEYS.items():
        assert parsed[name] == [pytest.approx(values[key], abs=1e-6)]


def test_regexes_do_not_cross_match():
    line = format_metric_line({"valid_loss": 1.5, "train_loss": 2.5})
    parsed = parse_log(line)
    assert parsed == {"valid:loss": [1.5], "train:loss": [2.5]}


def test_scientific_notation_is_read():
    assert parse_log("#metrics valid_loss=1.5e-07")["valid:loss"] == [1.5e-07]


def test_definitions_fit_sagemaker_limits():
    assert len(METRIC_DEFINITIONS) <= 40
    for d in METRIC_DEFINITIONS:
        assert re.compile(d["Regex"]).groups == 1
        assert len(d["Name"]) <= 255 and len(d["Regex"]) <= 500
    assert OBJECTIVES == {"valid:loss": "Minimize", "valid:accuracy": "Maximize"}


def test_unknown_metric_key_is_refused():
    with pytest.raises(KeyError):
        format_metric_line({"val_loss": 1.0})
