"""The artifact manifest: the one contract between the training and serving images.

The model directory (SageMaker's model.tar.gz, unpacked) holds ``model.pt`` (a state_dict) and
``manifest.json`` (this). Serving rebuilds the network and preprocessing from these two files
alone. The format is documented in docs/artifact.md; bump FORMAT_VERSION on any change that
an older reader would misread.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from job_contract.deployment import MANIFEST_PIN_ENV
from model_artifact.preprocess import EvalPreprocessing

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.pt"
HEAD_FILE = "head.pt"  # the head's tensors alone: what a head-only load reads
ARCHITECTURES = ("resnet50",)
INT8 = "int8"
COMPILED = "compiled"
COMPILED_AVX512 = "compiled_avx512"  # the same, compiled for x86-64-v4 (AVX-512) CPUs
COMPILED_AMX_BF16 = "compiled_amx_bf16"  # the same in bfloat16, for CPUs with AMX
# Optional extra forms of the same model, see docs/artifact.md; a reader skips names it
# does not know, so adding one keeps older serving images working.
VARIANT_NAMES = (INT8, COMPILED, COMPILED_AVX512, COMPILED_AMX_BF16)
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class ArtifactError(ValueError):
    """The artifact is missing or malformed; the message names the file and the problem."""


def _require(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise ArtifactError(f"{where}: missing field '{key}'")
    value = data[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ArtifactError(f"{where}: field '{key}' must be {names}, got {value!r:.80}")
    return value


def _optional_sha256(data: dict[str, Any], key: str, where: str) -> str:
    """An optional hash field: absent -> "", else 64 lowercase hex digits."""
    value = data.get(key, "")
    if value != "" and not (isinstance(value, str) and _SHA256_HEX.fullmatch(value)):
        raise ArtifactError(f"{where}: {key} must be 64 lowercase hex digits, got {value!r:.80}")
    return value


def _head_file(data: dict[str, Any], weights_file: str, where: str) -> str:
    value = data.get("head_file", "")
    if value == "":
        return ""
    if (not isinstance(value, str) or os.path.basename(value) != value or value in (".", "..")
            or value == weights_file):
        raise ArtifactError(f"{where}: head_file must be a plain file name other than "
                            "weights_file")
    return value


@dataclass(frozen=True)
class Variant:
    """Another form of the same network (e.g. int8), in its own file next to the weights."""

    file: str
    format: str
    sha256: str = ""
    calibration_images: int = 0
    top1_agreement: float | None = None  # with the fp32 model, on agreement_images images
    agreement_images: int = 0
    torch: str = ""  # compiled, int8: the torch version whose ABI the file needs
    max_logit_difference: float | None = None  # compiled, int8: largest |logit - fp32 logit|
    threads: int = 0  # compiled, int8: intra-op threads it was compiled for (0: not recorded)

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "format": self.format,
            "sha256": self.sha256,
            "calibration_images": self.calibration_images,
            "top1_agreement": self.top1_agreement,
            "agreement_images": self.agreement_images,
            **({"torch": self.torch} if self.torch else {}),
            **({"max_logit_difference": self.max_logit_difference}
               if self.max_logit_difference is not None else {}),
            **({"threads": self.threads} if self.threads else {}),
        }

    def required_sha256(self, name: str) -> str:
        """The variant's sha256: mandatory, because the file is code (a shared library) and a
        missing hash would load whatever file sits there."""
        if not _SHA256_HEX.fullmatch(self.sha256):
            raise ArtifactError(f"{MANIFEST_FILE}: variants.{name}.sha256 is "
                                f"{'missing' if not self.sha256 else 'not 64 hex digits'}: a "
                                f"variant without its hash is never loaded")
        return self.sha256

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Variant:
        if not isinstance(data, dict):
            raise ArtifactError(f"{where}: expected a JSON object")
        file = _require(data, "file", str, where)
        if os.path.basename(file) != file or file in ("", ".", ".."):
            raise ArtifactError(f"{where}: file must be a plain file name")
        fmt = _require(data, "format", str, where)
        if not fmt:
            raise ArtifactError(f"{where}: format must be a non-empty string")
        sha = data.get("sha256", "")
        if not isinstance(sha, str):
            raise ArtifactError(f"{where}: sha256 must be a string")
        count = data.get("calibration_images", 0)
        checked = data.get("agreement_images", 0)
        threads = data.get("threads", 0)
        for key, value in (("calibration_images", count), ("agreement_images", checked),
                           ("threads", threads)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ArtifactError(f"{where}: {key} must be a non-negative integer")
        agreement = data.get("top1_agreement")
        if agreement is not None and (
            isinstance(agreement, bool) or not isinstance(agreement, (int, float))
            or not 0.0 <= agreement <= 1.0
        ):
            raise ArtifactError(f"{where}: top1_agreement must be a number in [0, 1]")
        version = data.get("torch", "")
        if not isinstance(version, str):
            raise ArtifactError(f"{where}: torch must be a string")
        difference = data.get("max_logit_difference")
        if difference is not None and (isinstance(difference, bool)
                                       or not isinstance(difference, (int, float))):
            raise ArtifactError(f"{where}: max_logit_difference must be a number")
        return cls(file, fmt, sha, count,
                   None if agreement is None else float(agreement), checked, version,
                   None if difference is None else float(difference), threads)


def _number(data: dict[str, Any], key: str, where: str, low: float = -math.inf,
            high: float = math.inf) -> float:
    value = _require(data, key, (int, float), where)
    if not math.isfinite(value) or not low <= value <= high:
        raise ArtifactError(f"{where}: field '{key}' must be a finite number in [{low}, {high}]")
    return float(value)


def _count(data: dict[str, Any], key: str, where: str) -> int:
    value = data.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ArtifactError(f"{where}: {key} must be a non-negative integer")
    return value


@dataclass(frozen=True)
class Calibration:
    """Temperature scaling fitted on the valid split (model_artifact/calibration.py)."""

    temperature: float  # serving divides the logits by this before the softmax
    ece_before: float | None = None  # expected calibration error on the valid split, T = 1
    ece_after: float | None = None  # ... and with this temperature
    valid_images: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "ece_before": self.ece_before,
                "ece_after": self.ece_after, "valid_images": self.valid_images}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Calibration:
        if not isinstance(data, dict):
            raise ArtifactError(f"{where}: expected a JSON object")
        temperature = _number(data, "temperature", where, 1e-6)
        ece = [None if data.get(k) is None else _number(data, k, where, 0.0, 1.0)
               for k in ("ece_before", "ece_after")]
        return cls(temperature, ece[0], ece[1], _count(data, "valid_images", where))


NOVELTY_METHODS = ("energy", "mahalanobis", "features")
NOVELTY_FILE = "novelty.pt"  # features: the whitening matrix and projected class means


@dataclass(frozen=True)
class Novelty:
    """What serving needs to score how far an image is from the training classes, from the
    logits alone (model_artifact/novelty.py); higher is further; abstain when > threshold."""

    method: str  # one of NOVELTY_METHODS
    threshold: float
    target_false_abstain: float  # the rate asked for (hyperparameter abstain-rate)
    valid_false_abstain: float  # the rate the threshold gives on the valid split
    valid_images: int = 0
    temperature: float = 1.0  # energy: the logits are divided by this
    means: tuple[tuple[float, ...], ...] = ()  # mahalanobis: per-class mean logit vector
    precision: tuple[tuple[float, ...], ...] = ()  # mahalanobis: inverse shared covariance
    file: str = ""  # features: the tensor file beside the manifest (NOVELTY_FILE)
    sha256: str = ""  # features: that file's sha256, checked before it is loaded
    fit_images: int = 0  # features: train images the class Gaussians were fitted on

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "threshold": self.threshold,
                "target_false_abstain": self.target_false_abstain,
                "valid_false_abstain": self.valid_false_abstain,
                "valid_images": self.valid_images, "temperature": self.temperature,
                **({"means": [list(r) for r in self.means],
                    "precision": [list(r) for r in self.precision]} if self.means else {}),
                **({"file": self.file, "sha256": self.sha256, "fit_images": self.fit_images}
                   if self.file else {})}

    @classmethod
    def from_dict(cls, data: Any, where: str, num_classes: int) -> Novelty:
        if not isinstance(data, dict):
            raise ArtifactError(f"{where}: expected a JSON object")
        method = _require(data, "method", str, where)
        if method not in NOVELTY_METHODS:
            raise ArtifactError(f"{where}: method {method!r} is not one of {NOVELTY_METHODS}")
        matrices = [_matrix(data.get(k, []), f"{where}.{k}", num_classes if method ==
                            "mahalanobis" else 0) for k in ("means", "precision")]
        return cls(method, _number(data, "threshold", where),
                   _number(data, "target_false_abstain", where, 0.0, 1.0),
                   _number(data, "valid_false_abstain", where, 0.0, 1.0),
                   _count(data, "valid_images", where),
                   _number(data, "temperature", where, 1e-6) if "temperature" in data else 1.0,
                   matrices[0], matrices[1], *_novelty_file(data, where, method))


def _novelty_file(data: dict[str, Any], where: str, method: str) -> tuple[str, str, int]:
    """features: the tensor file's name, sha256 and fit size (required); others: none."""
    if method != "features":
        return "", "", 0
    return (*_file_and_sha256(data, where), _count(data, "fit_images", where))


def _file_and_sha256(data: dict[str, Any], where: str) -> tuple[str, str]:
    """A file beside the manifest: its plain name and sha256 (64 hex digits)."""
    file = _require(data, "file", str, where)
    if os.path.basename(file) != file or file in ("", ".", ".."):
        raise ArtifactError(f"{where}: file must be a plain file name")
    sha = _require(data, "sha256", str, where)
    if not _SHA256_HEX.fullmatch(sha):
        raise ArtifactError(f"{where}: sha256 must be 64 hex digits")
    return file, sha


def _matrix(rows: Any, where: str, size: int) -> tuple[tuple[float, ...], ...]:
    """A size x size matrix of finite numbers (size 0: must be empty)."""
    ok = isinstance(rows, list) and len(rows) == size and all(
        isinstance(r, list) and len(r) == size and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in r) for r in rows)
    if not ok:
        raise ArtifactError(f"{where}: must be a {size}x{size} matrix of finite numbers")
    return tuple(tuple(float(v) for v in r) for r in rows)


@dataclass(frozen=True)
class SelfTest:
    """Held-out inputs with training's fp32 logits (model_artifact.self_test), in their own
    file next to the weights: serving runs them through the graph it serves before it is ready."""

    file: str
    sha256: str
    images: int

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, "images": self.images}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> SelfTest:
        if not isinstance(data, dict):
            raise ArtifactError(f"{where}: expected a JSON object")
        file, sha = _file_and_sha256(data, where)
        images = _require(data, "images", int, where)
        if images < 1:
            raise ArtifactError(f"{where}: images must be at least 1")
        return cls(file, sha, images)


@dataclass(frozen=True)
class Manifest:
    architecture: str
    class_names: tuple[str, ...]
    preprocessing: EvalPreprocessing
    weights_file: str = WEIGHTS_FILE
    weights_sha256: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    # Optional; absent from the JSON when empty, and ignored by readers that predate it.
    variants: dict[str, Variant] = field(default_factory=dict)
    # Optional, informative: how the weights were trained ({"device": ..., "precision": ...}).
    training: dict[str, str] = field(default_factory=dict)
    # Optional: network.backbone_sha256 / head_sha256 of the weights, and the file holding the
    # head alone. Models with the same backbone_sha256 share one backbone in multi-model
    # serving (docs/artifact.md).
    backbone_sha256: str = ""
    head_sha256: str = ""
    head_file: str = ""
    # Optional (docs/artifact.md): temperature scaling and the "none of my classes" detector.
    calibration: Calibration | None = None
    novelty: Novelty | None = None
    # Optional: the serving self-test's inputs and logits (absent: no self-test runs).
    self_test: SelfTest | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def with_variant(self, name: str, variant: Variant) -> Manifest:
        """This manifest with ``variants[name]`` set (added or replaced)."""
        return replace(self, variants={**self.variants, name: variant})

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "architecture": self.architecture,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "preprocessing": self.preprocessing.to_dict(),
            "weights_file": self.weights_file,
            "weights_sha256": self.weights_sha256,
            "metrics": dict(self.metrics),
            "hyperparameters": dict(self.hyperparameters),
            "versions": dict(self.versions),
            **({"variants": {name: v.to_dict() for name, v in self.variants.items()}}
               if self.variants else {}),
            **({"training": dict(self.training)} if self.training else {}),
            **({"backbone_sha256": self.backbone_sha256} if self.backbone_sha256 else {}),
            **({"head_sha256": self.head_sha256} if self.head_sha256 else {}),
            **({"head_file": self.head_file} if self.head_file else {}),
            **({"calibration": self.calibration.to_dict()} if self.calibration else {}),
            **({"novelty": self.novelty.to_dict()} if self.novelty else {}),
            **({"self_test": self.self_test.to_dict()} if self.self_test else {}),
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = MANIFEST_FILE) -> Manifest:
        """Validate every field a reader relies on; errors name the field."""
        if not isinstance(data, dict):
            raise ArtifactError(f"{where}: expected a JSON object")
        version = _require(data, "format_version", int, where)
        if version != FORMAT_VERSION:
            raise ArtifactError(
                f"{where}: format_version {version} is not supported (this reader: "
                f"{FORMAT_VERSION})"
            )
        arch = _require(data, "architecture", str, where)
        if arch not in ARCHITECTURES:
            raise ArtifactError(f"{where}: architecture {arch!r} is not one of {ARCHITECTURES}")
        names = _require(data, "class_names", list, where)
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ArtifactError(f"{where}: class_names must be a non-empty list of strings")
        if len(set(names)) != len(names):
            raise ArtifactError(f"{where}: class_names has duplicates")
        if "num_classes" in data and data["num_classes"] != len(names):
            raise ArtifactError(
                f"{where}: num_classes is {data['num_classes']} but class_names has {len(names)}"
            )
        pre = _require(data, "preprocessing", dict, where)
        try:
            preprocessing = EvalPreprocessing.from_dict(pre)
        except (TypeError, KeyError, ValueError) as exc:
            raise ArtifactError(f"{where}: invalid preprocessing: {exc}") from None
        weights_file = _require(data, "weights_file", str, where)
        if os.path.basename(weights_file) != weights_file or weights_file in ("", ".", ".."):
            raise ArtifactError(f"{where}: weights_file must be a plain file name")
        raw_variants = data.get("variants", {})
        if not isinstance(raw_variants, dict):
            raise ArtifactError(f"{where}: variants must be an object")
        variants = {}
        for name, value in raw_variants.items():
            if name not in VARIANT_NAMES:
                continue  # a newer writer's variant: this reader cannot use it, fp32 still works
            variant = Variant.from_dict(value, f"{where}: variants.{name}")
            if variant.file == weights_file:
                raise ArtifactError(f"{where}: variants.{name}.file is the fp32 weights file")
            variants[name] = variant
        return cls(
            architecture=arch,
            class_names=tuple(names),
            preprocessing=preprocessing,
            weights_file=weights_file,
            weights_sha256=str(data.get("weights_sha256", "")),
            metrics=dict(data.get("metrics", {})),
            hyperparameters=dict(data.get("hyperparameters", {})),
            versions=dict(data.get("versions", {})),
            format_version=version,
            variants=variants,
            training=dict(data.get("training", {})),
            backbone_sha256=_optional_sha256(data, "backbone_sha256", where),
            head_sha256=_optional_sha256(data, "head_sha256", where),
            head_file=_head_file(data, weights_file, where),
            **_trust_fields(data, where, len(names)),
            self_test=_self_test(data, where),
        )

    def with_trust(self, calibration: Calibration | None,
                   novelty: Novelty | None) -> Manifest:
        """This manifest with its calibration and novelty fields set."""
        return replace(self, calibration=calibration, novelty=novelty)

    def write(self, model_dir: str | os.PathLike[str]) -> Path:
        path = Path(model_dir) / MANIFEST_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, model_dir: str | os.PathLike[str]) -> Manifest:
        """The manifest, after checking its bytes against the deployer's pin (if set)."""
        path = Path(model_dir) / MANIFEST_FILE
        raw = pinned_manifest_bytes(model_dir)
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{path}: not valid JSON: {exc}") from None
        return cls.from_dict(data, where=str(path))


def _trust_fields(data: dict[str, Any], where: str, num_classes: int) -> dict[str, Any]:
    """The optional calibration and novelty fields, parsed (absent: None)."""
    calibration, novelty = data.get("calibration"), data.get("novelty")
    return {
        "calibration": None if calibration is None
        else Calibration.from_dict(calibration, f"{where}: calibration"),
        "novelty": None if novelty is None
        else Novelty.from_dict(novelty, f"{where}: novelty", num_classes),
    }
def _self_test(data: dict[str, Any], where: str) -> SelfTest | None:
    raw = data.get("self_test")
    return None if raw is None else SelfTest.from_dict(raw, f"{where}: self_test")


def manifest_sha256(model_dir: str | os.PathLike[str]) -> str:
    """sha256 hex of manifest.json's bytes: the value a deployer pins (MANIFEST_PIN_ENV)."""
    return hashlib.sha256((Path(model_dir) / MANIFEST_FILE).read_bytes()).hexdigest()


def expected_manifest_sha256(env: Mapping[str, str] | None = None) -> str | None:
    """The pinned hash from MANIFEST_PIN_ENV, None when unset; ArtifactError if malformed."""
    raw = (os.environ if env is None else env).get(MANIFEST_PIN_ENV, "").strip()
    if not raw:
        return None
    if not _SHA256_HEX.fullmatch(raw.lower()):
        raise ArtifactError(f"{MANIFEST_PIN_ENV}={raw[:80]!r} is not a sha256 (64 hex digits)")
    return raw.lower()


def pinned_manifest_bytes(model_dir: str | os.PathLike[str]) -> bytes:
    """manifest.json's bytes; ArtifactError if missing, unreadable, or not the pinned ones.
    The bytes checked are the bytes parsed: no window to swap the file in between."""
    path = Path(model_dir) / MANIFEST_FILE
    expected = expected_manifest_sha256()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{path}: not found (is this a model directory?)") from None
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    if expected is not None:
        actual = hashlib.sha256(raw).hexdigest()
        if actual != expected:
            raise ArtifactError(f"{path}: sha256 {actual} is not the deployed "
                                f"{MANIFEST_PIN_ENV}={expected}: not the artifact that was pinned")
    return raw
