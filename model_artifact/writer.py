"""Writing an artifact, the other half of network.load_artifact: ``model.pt`` and
``manifest.json``, then the optional variants the training job adds when its hyperparameters
ask for them (``int8``, ``compile``).

A variant that cannot be written is logged and left out: the fp32 artifact stays usable, and
serving says what is missing (``SERVE_PRECISION=int8``) or uses its TorchScript graph. The
variant writers log to the caller's ``log`` (the training job's, so the lines land in the
job's log, which local tuning captures per trial).
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model_artifact.manifest import (
    COMPILED,
    HEAD_FILE,
    INT8,
    NOVELTY_FILE,
    ArtifactError,
    Manifest,
    Novelty,
)
from model_artifact.network import HEAD_PREFIX, backbone_sha256, file_sha256, head_sha256

_log = logging.getLogger(__name__)

Images = Sequence[str | os.PathLike[str]]
INT8_CHECK_IMAGES = 128  # held-out images the int8 agreement is measured on
# Held-out images the compiled variants are checked on: enough that the bf16 package's bar
# (agreement.AGREEMENT_BAR, 99.5%) allows one changed answer in 200, not none in 32.
COMPILED_CHECK_IMAGES = 200


def write_artifact(model_dir: Path, model: nn.Module, manifest: Manifest) -> Manifest:
    """model.pt (state_dict), head.pt (the head's tensors alone, for head-only loads) and
    manifest.json with the weights' sha256 and the backbone's and head's fingerprints. Returns
    the manifest as written; ArtifactError (one line) when the folder cannot take the files."""
    weights = Path(model_dir) / manifest.weights_file
    state = model.state_dict()
    try:
        torch.save(state, weights)
        torch.save({k: v for k, v in state.items() if k.startswith(HEAD_PREFIX)},
                   Path(model_dir) / HEAD_FILE)
        manifest = replace(manifest, weights_sha256=file_sha256(weights),
                           backbone_sha256=backbone_sha256(state), head_sha256=head_sha256(state),
                           head_file=HEAD_FILE)
        manifest.write(model_dir)
    except OSError as exc:
        raise ArtifactError(f"cannot write the model to {model_dir}: {exc.strerror or exc}"
                            ) from None
    return manifest


def write_feature_novelty(model_dir: Path, novelty: Novelty, gaussian: Any) -> Novelty:
    """novelty.pt (model_artifact.novelty.FeatureGaussian's tensors) beside the manifest; the
    novelty field naming it with its sha256 (the caller writes it with the manifest)."""
    from model_artifact.novelty import save_feature_gaussian

    path = Path(model_dir) / NOVELTY_FILE
    try:
        save_feature_gaussian(path, gaussian)
    except OSError as exc:
        raise ArtifactError(f"cannot write {path}: {exc.strerror or exc}") from None
    return replace(novelty, file=NOVELTY_FILE, sha256=file_sha256(path))


def write_int8(model_dir: Path, model: nn.Module, manifest: Manifest, *, train_images: Images,
               valid_images: Images, seed: int, log: logging.Logger = _log) -> Manifest:
    """The int8 variant (model_artifact.quantize), calibrated on a seeded sample of training
    images and checked on one of validation images. Returns the manifest as written, or
    ``manifest`` unchanged when quantization failed (logged)."""
    from model_artifact.quantize import (
        CALIBRATION_IMAGES,
        agreement_warning,
        write_int8_variant,
    )

    rng = random.Random(seed)
    calibration = sorted(rng.sample(list(train_images),
                                    min(CALIBRATION_IMAGES, len(train_images))))
    check = sorted(rng.sample(list(valid_images), min(INT8_CHECK_IMAGES, len(valid_images))))
    try:
        written = write_int8_variant(model_dir, model, manifest, calibration, check)
    except Exception as exc:  # quantization is optional; the fp32 artifact stays usable
        log.error("int8 variant not written: %s: %s", type(exc).__name__, exc)
        return manifest
    variant = written.variants[INT8]
    log.info("int8 variant %s: calibrated on %d training images, top-1 agreement with fp32 "
             "%.4f on %d %s images", variant.file, variant.calibration_images,
             variant.top1_agreement, variant.agreement_images, "valid" if check else "train")
    warning = agreement_warning(variant)
    if warning:
        # Serving's default stays fp32 whatever the job writes; say so where the job is read.
        log.warning("%s; not the default: endpoints serve fp32 unless SERVE_PRECISION=int8",
                    warning)
    return written


def write_compiled(model_dir: Path, model: nn.Module, manifest: Manifest, *,
                   valid_images: Images, seed: int, log: logging.Logger = _log) -> Manifest:
    """The compiled variant (model_artifact.compiled), checked against fp32 on a seeded sample
    of validation images. Returns the manifest as written, or ``manifest`` unchanged when
    compiling failed (logged)."""
    from model_artifact.compiled import write_compiled_variant

    images = list(valid_images)
    check = sorted(random.Random(seed).sample(images, min(COMPILED_CHECK_IMAGES, len(images))))
    start = time.perf_counter()
    try:
        written = write_compiled_variant(model_dir, model, manifest, check)
    except Exception as exc:  # optional: the fp32 artifact stays usable
        log.error("compiled variant not written: %s: %s", type(exc).__name__, exc)
        return manifest
    variant = written.variants[COMPILED]
    log.info("compiled variant %s in %.0f s: top-1 agreement with fp32 %.4f on %d valid "
             "images, largest logit difference %.2g", variant.file,
             time.perf_counter() - start, variant.top1_agreement, variant.agreement_images,
             variant.max_logit_difference)
    return written


def write_self_test(model_dir: Path, model: nn.Module, manifest: Manifest, *,
                    valid_images: Images, seed: int, log: logging.Logger = _log) -> Manifest:
    """The serving self-test (model_artifact.self_test): the clearest of a seeded sample of
    validation images, preprocessed as serving does, with this model's fp32 logits. Returns
    the manifest as written, or ``manifest`` unchanged when it could not be written (logged:
    serving then runs no self-test)."""
    from model_artifact.preprocess import image_batches
    from model_artifact.self_test import CANDIDATES, write_self_test_file

    images = list(valid_images)
    chosen = sorted(random.Random(seed).sample(images, min(CANDIDATES, len(images))))
    try:
        if not chosen:
            raise ArtifactError("no validation image to take the inputs from")
        inputs = torch.cat(list(image_batches(chosen, manifest.preprocessing)))
        written = write_self_test_file(model_dir, model, manifest, inputs)
    except Exception as exc:  # optional: the artifact serves without it
        log.warning("self-test inputs not written: %s: %s", type(exc).__name__, exc)
        return manifest
    log.info("self-test: %d valid images with their fp32 logits in %s",
             written.self_test.images, written.self_test.file)
    return written
