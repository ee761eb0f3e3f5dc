"""The hyperparameters the training image accepts: one table, one parser.

SageMaker hands hyperparameters to the script as command-line strings after the
sagemaker-training toolkit has JSON-decoded them once, so the same value can arrive as
``0.01``, ``"0.01"`` (with quotes, when a client double-encoded it), ``True`` or ``true``.
Every value goes through :func:`parse_value`, which also serves the drivers when they turn a
finished job's hyperparameters back into clean typed values. ``SPECS`` is the only list of
hyperparameters: the typed :data:`Hyperparameters` is derived from it.

This module must stay importable without torch: the drivers import it on a laptop.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

AUTO = "auto"
# int8=true: training images the job calibrates the int8 model on (a seeded sample);
# model_artifact.quantize uses it, the table's help text states it.
INT8_CALIBRATION_IMAGES = 64


class HyperparameterError(ValueError):
    """A hyperparameter is unknown or its value is malformed; the message says which."""


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True)
class Spec:
    """How one hyperparameter is typed, bounded and documented."""

    name: str  # the canonical (hyphenated) name, as passed on the command line
    kind: str  # "float" | "int" | "bool" | "choice" | "str"
    default: Any
    help: str
    low: float | None = None  # inclusive bounds
    high: float | None = None
    choices: tuple[str, ...] = ()
    allow_auto: bool = False  # "auto" accepted besides a number

    def describe_range(self) -> str:
        if self.choices:
            return ", ".join(self.choices)
        parts = []
        if self.low is not None or self.high is not None:
            lo = "-inf" if self.low is None else _number(self.low)
            hi = "inf" if self.high is None else _number(self.high)
            parts.append(f"[{lo}, {hi}]")
        if self.allow_auto:
            parts.append(AUTO)
        return " or ".join(parts) if parts else "any"


SPECS: tuple[Spec, ...] = (
    Spec("lr", "float", 1e-3, "learning rate (per optimizer step; see docs for batch scaling)",
         low=1e-7, high=10.0),
    Spec("batch-size", "int", 32, "images per optimizer step on one device", low=1, high=4096),
    Spec("epochs", "int", 10, "maximum number of passes over the training split", low=1,
         high=10000),
    Spec("optimizer", "choice", "adamw", "optimizer", choices=("sgd", "adamw")),
    Spec("momentum", "float", 0.9, "SGD momentum (ignored by adamw)", low=0.0, high=0.999),
    Spec("weight-decay", "float", 1e-4, "decoupled (adamw) or L2 (sgd) weight decay", low=0.0,
         high=1.0),
    Spec("trainable-layers", "choice", "0",
         "0 = frozen backbone (train the new head only), 1-4 = also train the last N ResNet "
         "stages, all = train every layer", choices=("0", "1", "2", "3", "4", "all")),
    Spec("image-size", "int", 224, "side of the square crop fed to the network", low=32,
         high=1024),
    Spec("weights", "str", "imagenet",
         "imagenet (torchvision weights from the local torch cache), none (random init), auto "
         "(imagenet when the image holds those weights, else none; the manifest records which), "
         "or a file name in the 'pretrained' channel"),
    Spec("augment", "bool", True,
         "random resized crop + horizontal flip on training images (false: evaluation "
         "preprocessing only)"),
    Spec("feature-cache", "bool", True,
         "with trainable-layers=0: compute backbone features once per image and view, then "
         "train only the head (see docs/training.md)"),
    Spec("cache-views", "int", 2,
         "views per training image for the feature cache: centre, mirrored centre, then "
         "random resized crops", low=1, high=16),
    Spec("seed", "int", 42, "seed for initialisation, data order and augmentation", low=0,
         high=2**31 - 1),
    Spec("num-workers", "int", AUTO,
         "DataLoader worker processes (auto: on GPUs the host's CPUs per process, max 8; on CPU "
         "0, since the model's threads already use every core)",
         low=0, high=64, allow_auto=True),
    Spec("gpu-decode", "choice", AUTO,
         "decode (nvjpeg) and augment training images on the GPU, the DataLoader workers only "
         "read the files: auto = on when training on CUDA, off on CPU; true fails without "
         "CUDA; valid and test keep serving's CPU preprocessing (docs/training.md)",
         choices=(AUTO, "true", "false")),
    Spec("early-stopping-patience", "int", 0,
         "stop after this many epochs without a better valid loss (0 = never)", low=0,
         high=10000),
    Spec("log-interval", "int", 20, "training steps between progress lines", low=1,
         high=1_000_000),
    Spec("max-corrupt-fraction", "float", 0.05,
         "share of unreadable images per split that is skipped before the job fails",
         low=0.0, high=1.0),
    Spec("profile-steps", "int", 0,
         "training steps of the first epoch traced by torch.profiler into "
         "<output-data-dir>/profiler (0 = off)", low=0, high=1000),
    Spec("int8", "bool", False,
         "also write an int8 model (PyTorch 2 export quantization, calibrated on "
         f"{INT8_CALIBRATION_IMAGES} training images, compiled with AOTInductor) "
         "that serving uses with SERVE_PRECISION=int8, never by default; adds a few minutes "
         "on CPU"),
    Spec("compile", "bool", True,
         "also write the fp32 model compiled ahead of time (AOTInductor, x86-64-v3, batch 1), "
         "which fp32 serving on CPU runs about 1.2x faster than its TorchScript graph; adds "
         "20-40 s and needs a C++ compiler (the training image has one). On a CPU with "
         "AVX-512 it also tries an x86-64-v4 package, and on one with AMX a bfloat16 package, "
         "each kept only when faster there (the bf16 one only when its answers agree with "
         "fp32's: docs/artifact.md)"),
    Spec("precision", "choice", AUTO,
         "arithmetic of the training steps: auto = bf16 autocast on GPUs with native bf16 "
         "(compute capability >= 8.0: A10G, A100, H100, L4), fp16 autocast + gradient scaler "
         "on older GPUs (T4, V100), fp32 on CPU (except a frozen backbone's feature pass, "
         "bf16 on CPUs with AMX); fp16 and bf16 fail on a device without them",
         choices=(AUTO, "fp32", "fp16", "bf16")),
    Spec("abstain-rate", "float", 0.05,
         "share of the valid split's (known-class) images that serving may flag abstain=true: "
         "sets the novelty threshold (docs/artifact.md)", low=0.0, high=0.5),
    Spec("abstain-score", "choice", "energy",
         "the novelty score serving abstains on: energy (from the logits and the temperature), "
         "mahalanobis (class-conditional Gaussian on the logits; at most 64 classes, else "
         "energy) or features (class-conditional Gaussian on the 2048-d pooled features, "
         "fitted on up to 10,000 train images: one more forward pass, novelty.pt of ~16 MB)",
         choices=("energy", "mahalanobis", "features")),
)

SPECS_BY_NAME: dict[str, Spec] = {s.name: s for s in SPECS}


def respell(name: str, separator: str) -> str:
    """The one place a name's '-' and '_' are exchanged: ``separator`` '-' gives the spelling
    of the table and the command line (``batch-size``), '_' a Python identifier
    (``batch_size``)."""
    other = "_" if separator == "-" else "-"
    return name.replace(other, separator)


def canonical_name(name: str) -> str:
    """``--batch_size`` and ``batch-size`` both mean ``batch-size``."""
    return respell(name.lstrip("-").strip().lower(), "-")


def _unquote(raw: str) -> str:
    text = raw.strip()
    # A value JSON-encoded more than once keeps a layer of quotes per extra encoding.
    while len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def _fail(spec: Spec, raw: Any, expected: str) -> HyperparameterError:
    return HyperparameterError(
        f"hyperparameter '{spec.name}' has invalid value {raw!r}: expected {expected} "
        f"(valid: {spec.describe_range()})"
    )


def _check_bounds(spec: Spec, value: float, raw: Any) -> None:
    if (spec.low is not None and value < spec.low) or (spec.high is not None and value > spec.high):
        raise _fail(spec, raw, "a value in range")


def parse_value(name: str, raw: Any) -> Any:
    """Turn one raw hyperparameter (string or already-typed) into its typed value."""
    key = canonical_name(name)
    spec = SPECS_BY_NAME.get(key)
    if spec is None:
        raise HyperparameterError(
            f"unknown hyperparameter '{name}'; valid names: {', '.join(SPECS_BY_NAME)}"
        )
    text = _unquote(str(raw))
    if spec.allow_auto and text.lower() == AUTO:
        return AUTO
    if spec.kind == "float":
        try:
            value = float(text)
        except ValueError:
            raise _fail(spec, raw, "a number") from None
        if not math.isfinite(value):
            raise _fail(spec, raw, "a finite number")
        _check_bounds(spec, value, raw)
        return value
    if spec.kind == "int":
        try:
            as_float = float(text)
        except ValueError:
            raise _fail(spec, raw, "an integer") from None
        if not as_float.is_integer():
            raise _fail(spec, raw, "an integer")
        value = int(as_float)
        _check_bounds(spec, value, raw)
        return value
    if spec.kind == "bool":
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise _fail(spec, raw, "true or false")
    if spec.kind == "choice":
        lowered = text.lower()
        if lowered.endswith(".0") and lowered[:-2] in spec.choices:  # 2.0 from a numeric range
            lowered = lowered[:-2]
        if lowered not in spec.choices:
            raise _fail(spec, raw, "one of the choices")
        return lowered
    if not text:
        raise _fail(spec, raw, "a non-empty string")
    return text


class _HyperparameterMethods:
    """What every :data:`Hyperparameters` value can do besides holding its fields."""

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> Hyperparameters:
        """Parse a {name: raw or typed value} mapping; absent names take their defaults."""
        values = {s.name: s.default for s in SPECS}
        for name, value in raw.items():
            values[canonical_name(name)] = parse_value(name, value)
        return cls(**{FIELD_NAMES[name]: value for name, value in values.items()})

    def to_dict(self) -> dict[str, Any]:
        """Hyphenated names, as the job received them: goes into the manifest."""
        return {name: getattr(self, field) for name, field in FIELD_NAMES.items()}

    @property
    def trainable_stages(self) -> int:
        """How many of the four ResNet stages train (5 = every layer, stem included)."""
        return 5 if self.trainable_layers == "all" else int(self.trainable_layers)


_PYTHON_TYPES: dict[str, type] = {"float": float, "int": int, "bool": bool, "choice": str,
                                  "str": str}

# table name -> field name (batch-size -> batch_size), in table order
FIELD_NAMES: dict[str, str] = {s.name: respell(s.name, "_") for s in SPECS}


def _field_type(spec: Spec) -> Any:
    python_type = _PYTHON_TYPES[spec.kind]
    return python_type | str if spec.allow_auto else python_type


# The typed hyperparameters of a job, one frozen field per row of SPECS (same order), so the
# table is the only list of them: batch-size is ``hp.batch_size``.
Hyperparameters = dataclasses.make_dataclass(
    "Hyperparameters",
    [(FIELD_NAMES[s.name], _field_type(s)) for s in SPECS],
    bases=(_HyperparameterMethods,),
    frozen=True,
)
Hyperparameters.__module__ = __name__  # make_dataclass would name its caller's caller
Hyperparameters.__doc__ = "Typed hyperparameters: one field per row of SPECS ('-' -> '_')."
