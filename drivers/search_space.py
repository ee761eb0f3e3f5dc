"""The hyperparameter search space, defined once for both tuning paths.

``scripts/tune.py`` turns these ranges into a SageMaker tuning request (:meth:`Range.to_sdk`)
and ``drivers/local_tuning.py`` into Optuna suggestions (:meth:`Range.suggest`). The flags that
both paths share (``--range``, ``--set``, ``--objective``, ``--strategy``, ``--early-stopping``,
``--max-jobs``, ``--serving-variants``, ``--best-out``) are added by
:func:`add_search_arguments`; the best trial goes to the one best-job file of
``drivers.common`` that ``train.py`` / ``deploy.py --from-best`` read. Trials skip the serving
variants (:data:`TRIAL_SKIPS`) unless asked; ``train.py --from-best`` turns them back on.

Importing this module needs neither torch nor the SageMaker SDK nor Optuna.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drivers.common import DEFAULT_BEST_FILE
from job_contract.hyperparameters import (
    SPECS_BY_NAME,
    HyperparameterError,
    canonical_name,
    parse_value,
)
from job_contract.metrics import DEFAULT_OBJECTIVE, OBJECTIVES

SCALINGS = {"log": "Logarithmic", "linear": "Linear", "auto": "Auto",
            "reverselog": "ReverseLogarithmic"}

# name -> spec, in the --range syntax (so the defaults go through the same checks)
DEFAULT_RANGES: dict[str, str] = {
    "lr": "1e-5:1e-2:log",
    "batch-size": "16,32,64",
    "epochs": "3:12",
    "trainable-layers": "0,2,4,all",
    "weight-decay": "1e-6:1e-2:log",
}


# The serving variants a tuning trial does not build unless asked (--serving-variants, or a
# --set / --range naming them): trials are compared, not served, and the compiled variant was
# most of a small trial's time (bench/README.md, trial_compile.py). `train.py --from-best` trains
# the model you serve with these back at the image's defaults (served_values).
TRIAL_SKIPS: dict[str, bool] = {"compile": False, "int8": False}


@dataclass(frozen=True)
class Range:
    """One tuning range: kind is 'Continuous', 'Integer' or 'Categorical'."""

    name: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    values: tuple[str, ...] = ()
    scaling: str = "Auto"

    @property
    def log(self) -> bool:
        """Sampled on a log scale (Optuna has no reverse-log: that one samples linearly)."""
        return self.scaling == "Logarithmic"

    def to_sdk(self) -> Any:
        """The SageMaker SDK v3 parameter range (imports the SDK: SageMaker path only)."""
        from sagemaker.core.parameter import (
            CategoricalParameter,
            ContinuousParameter,
            IntegerParameter,
        )

        if self.kind == "Continuous":
            return ContinuousParameter(self.low, self.high, scaling_type=self.scaling)
        if self.kind == "Integer":
            return IntegerParameter(self.low, self.high, scaling_type=self.scaling)
        return CategoricalParameter(list(self.values))

    def suggest(self, trial: Any) -> Any:
        """One value from an Optuna trial (duck-typed: no Optuna import), typed by the image's
        parser exactly as the training job would type it."""
        if self.kind == "Continuous":
            raw = trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)
        elif self.kind == "Integer":
            raw = trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        else:
            raw = trial.suggest_categorical(self.name, list(self.values))
        return parse_value(self.name, raw)


def parse_range(name: str, spec: str) -> Range | None:
    """``lr=1e-5:1e-2:log`` style spec -> Range (None for 'off'); checked against SPECS."""
    key = canonical_name(name)
    hp = SPECS_BY_NAME.get(key)
    if hp is None:
        raise HyperparameterError(f"unknown hyperparameter '{name}' in --range; valid names: "
                                  f"{', '.join(SPECS_BY_NAME)}")
    text = spec.strip()
    if text.lower() == "off":
        return None
    if ":" in text:
        parts = text.split(":")
        if len(parts) not in (2, 3):
            raise HyperparameterError(
                f"--range {key}: use LOW:HIGH[:log|linear|auto], got {spec!r}")
        scaling = SCALINGS.get(parts[2].strip().lower() if len(parts) == 3 else "auto")
        if scaling is None:
            raise HyperparameterError(f"--range {key}: scaling must be one of "
                                      f"{', '.join(SCALINGS)}, got {parts[2]!r}")
        if hp.kind not in ("float", "int"):
            raise HyperparameterError(f"--range {key}: a {hp.kind} hyperparameter takes a list "
                                      f"of choices A,B,C, not a LOW:HIGH range")
        low, high = parse_value(key, parts[0]), parse_value(key, parts[1])
        if not low < high:
            raise HyperparameterError(f"--range {key}: LOW must be below HIGH, got {spec!r}")
        if scaling in ("Logarithmic", "ReverseLogarithmic") and low <= 0:
            raise HyperparameterError(f"--range {key}: logarithmic scaling needs LOW > 0")
        kind = "Continuous" if hp.kind == "float" else "Integer"
        return Range(key, kind, low=low, high=high, scaling=scaling)
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise HyperparameterError(f"--range {key}: no values in {spec!r}")
    typed = [parse_value(key, v) for v in values]  # each choice checked
    return Range(key, "Categorical", values=tuple(str(v) for v in typed))


def build_ranges(overrides: dict[str, str], static: dict[str, Any]) -> dict[str, Range]:
    specs = dict(DEFAULT_RANGES)
    for name, spec in overrides.items():
        specs[canonical_name(name)] = spec
    for name in static:  # a fixed value replaces a default range
        if name in specs and name not in {canonical_name(n) for n in overrides}:
            del specs[name]
    ranges = {}
    for name, spec in specs.items():
        r = parse_range(name, spec)
        if r is not None:
            if name in static:
                raise HyperparameterError(f"'{name}' is both tuned (--range) and fixed (--set)")
            ranges[name] = r
    if not ranges:
        raise HyperparameterError("nothing to tune: every range is off")
    return ranges


def parse_static(pairs: dict[str, str]) -> dict[str, Any]:
    return {canonical_name(k): parse_value(k, v) for k, v in pairs.items()}


def trial_static(static: dict[str, Any], ranges: Mapping[str, Range],
                 serving_variants: bool) -> dict[str, Any]:
    """Every trial's fixed hyperparameters: the --set values, plus TRIAL_SKIPS for the names
    that neither --set nor --range gives, unless --serving-variants."""
    if serving_variants:
        return dict(static)
    skips = {k: v for k, v in TRIAL_SKIPS.items() if k not in static and k not in ranges}
    return {**skips, **static}


def served_values(best: Mapping[str, Any]) -> dict[str, Any]:
    """A best trial's hyperparameters for the model you serve: a serving variant the trial
    skipped (its TRIAL_SKIPS value, or absent) gets the image's default back, explicitly; one
    the search asked for (e.g. --set int8=true) stays."""
    values = dict(best)
    for name, skipped in TRIAL_SKIPS.items():
        if values.get(name, skipped) == skipped:
            values[name] = SPECS_BY_NAME[name].default
    return values


def request_values(values: Mapping[str, Any]) -> dict[str, str]:
    """Typed hyperparameters as a request's strings; booleans as the image's table spells them
    (true/false), everything else as str() writes it."""
    return {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in values.items()}


def add_search_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The tuning flags both paths share; returns the group so a path can add its own."""
    t = parser.add_argument_group("tuning")
    t.add_argument("--range", action="append", metavar="NAME=SPEC",
                   help="override a range: LOW:HIGH[:log|linear], A,B,C, or off "
                        f"(defaults: {', '.join(f'{k}={v}' for k, v in DEFAULT_RANGES.items())})")
    t.add_argument("--set", action="append", metavar="NAME=VALUE", dest="static",
                   help="a fixed hyperparameter for every trial (e.g. image-size=224)")
    t.add_argument("--objective", choices=sorted(OBJECTIVES), default=DEFAULT_OBJECTIVE,
                   help=f"metric to optimise (default {DEFAULT_OBJECTIVE})")
    t.add_argument("--strategy", default="Bayesian", choices=["Bayesian", "Random"],
                   help="search strategy (default Bayesian; locally: Optuna's TPE or random)")
    t.add_argument("--early-stopping", default="Auto", choices=["Auto", "Off"],
                   help="stop bad trials early (default Auto; locally: Optuna's median pruner)")
    t.add_argument("--max-jobs", type=int, default=10, help="number of trials (default 10)")
    t.add_argument("--serving-variants", action="store_true",
                   help="trials also build the serving variants (the compiled fp32 model; "
                        "int8 with --set int8=true); by default they run with compile=false "
                        "int8=false, and train.py --from-best trains the served model with "
                        "them")
    parser.add_argument("--best-out", type=Path, default=Path(DEFAULT_BEST_FILE),
                        help=f"where to write the best job (default {DEFAULT_BEST_FILE})")
    return t
