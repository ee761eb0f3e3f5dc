"""The optional int8 variant of an artifact: static post-training quantization for x86 CPUs,
compiled ahead of time like the fp32 compiled variant (model_artifact.compiled).

Recipe (PyTorch 2 export quantization, the supported path since torch.ao's FX graph mode and
TorchScript were deprecated): ``torch.export`` the fp32 network, annotate it with torchao's
``X86InductorQuantizer`` default config (per-channel symmetric int8 weights, per-tensor uint8
activations, histogram observers), ``prepare_pt2e``, calibrate with the artifact's own
*evaluation* preprocessing on training images, ``convert_pt2e``; then export the quantized
graph at batch 1 and compile it with ``compiled.compile_exported``, the step the fp32 variant
uses. Inductor fuses each quantize/conv/dequantize into a oneDNN int8 convolution.

The export is strict (TorchDynamo): the quantizer finds conv/add/ReLU patterns by the call
that made each node, and non-strict export labels both calls of a reused ``nn.ReLU`` (every
torchvision ResNet block) with one module, which the quantizer rejects ("Input partition has
more than one output node").

Quantizing needs torchao (training image, host venv); the package it writes calls only
torch's own int8 kernels, so serving loads it without torchao, through the same checks as the
compiled variant (sha256, torch version, thread count, CPU). The file is a shared library:
trust it as much as the training job that wrote it.

The training job writes it (model_artifact.writer.write_int8) after the fp32 artifact when the
hyperparameter ``int8`` is true; serving picks the variant only with ``SERVE_PRECISION=int8``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from job_contract.hyperparameters import INT8_CALIBRATION_IMAGES
from model_artifact.agreement import AGREEMENT_BAR, measure_agreement
from model_artifact.compiled import (
    SERVING_THREADS,
    BatchOne,
    compile_exported,
    known_format,
    load_package_variant,
    package_format,
)
from model_artifact.manifest import INT8, MANIFEST_FILE, ArtifactError, Manifest, Variant
from model_artifact.preprocess import image_batches

INT8_FILE = "model_int8.pt2"
INT8_FORMAT = "aotinductor-pt2e-x86-int8-batch1"
# What training wrote before the pt2e path (FX graph mode + TorchScript): refused by name.
OLD_INT8_FORMATS = ("torchscript-fx-x86-int8",)
CALIBRATION_IMAGES = INT8_CALIBRATION_IMAGES
# Left in fp32: the stem convolution, whose input is raw normalised pixels (one uint8 scale
# for the whole tensor rounds away the detail the first filters see), and the head, whose
# output is the answer. Together they are under 3% of ResNet50's multiply-adds; keeping them
# fp32 is what moved top-1 agreement with fp32 most in bench/int8_agreement.py (bench/README.md).
FP32_MODULES: tuple[str, ...] = ("conv1", "fc")

_log = logging.getLogger(__name__)


def _quantizer(fp32_modules: Sequence[str] = FP32_MODULES) -> object:
    """torchao's x86 Inductor quantizer, default static config except ``fp32_modules``
    (module names, e.g. ``conv1``), which stay fp32. Importing the module also registers its
    int8 fusion passes with Inductor, which compile_exported then applies."""
    try:
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86
    except ImportError as exc:
        raise ArtifactError(f"int8 quantization needs torchao (the training image has it): "
                            f"{exc}") from None
    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
    for name in fp32_modules:
        quantizer.set_module_name_qconfig(name, None)
    return quantizer


def quantize_int8(model: nn.Module, calibration: Iterable[torch.Tensor],
                  fp32_modules: Sequence[str] = FP32_MODULES) -> torch.fx.GraphModule:
    """fp32 model (eval) + calibration batches -> the quantized graph (quantize/dequantize
    around fp32 ops: what ``compile_int8`` turns into int8 kernels; ``fp32_modules`` stay
    fp32). The model is not modified.
    """
    quantizer = _quantizer(fp32_modules)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    batches = iter(calibration)
    first = next(batches, None)
    if first is None:
        raise ArtifactError("int8 calibration needs at least one image")
    model = model.to("cpu", memory_format=torch.contiguous_format).eval()
    # Batch 2 as the example, the batch dimension dynamic: calibration batches vary in size.
    example = first[:1].expand(2, -1, -1, -1).contiguous()
    with torch.no_grad():
        exported = torch.export.export(model, (example,), strict=True,
                                       dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
        prepared = prepare_pt2e(exported.module(), quantizer)
        prepared(first)
        for batch in batches:
            prepared(batch)
        return convert_pt2e(prepared)


def compile_int8(quantized: torch.fx.GraphModule, crop_size: int, path: str | os.PathLike[str],
                 threads: int = SERVING_THREADS) -> Path:
    """The quantized graph -> AOTInductor package at ``path`` (batch 1, channels_last)."""
    example = torch.zeros(1, 3, crop_size, crop_size).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        exported = torch.export.export(quantized, (example,), strict=True)
    return compile_exported(exported, path, threads)


def agreement_warning(variant: Variant) -> str | None:
    """One line when the variant's recorded top-1 agreement with fp32 is under the bar."""
    if variant.top1_agreement is None or variant.top1_agreement >= AGREEMENT_BAR:
        return None
    return (f"int8 variant gives fp32's top-1 class for {variant.top1_agreement:.1%} of "
            f"{variant.agreement_images} held-out images (bar {AGREEMENT_BAR:.1%}): its answers "
            "differ from the fp32 model's; compare them before serving SERVE_PRECISION=int8")


def load_int8(model_dir: str | os.PathLike[str], manifest: Manifest,
              threads: int = SERVING_THREADS) -> BatchOne:
    """The manifest's int8 variant, checked like the compiled one (hash, torch, CPU; a thread
    count other than the package's is logged, not refused); ArtifactError says which check
    failed."""
    variant = manifest.variants.get(INT8)
    if variant is None:
        raise ArtifactError(
            f"{Path(model_dir) / MANIFEST_FILE}: no int8 variant (train with the "
            f"hyperparameter int8=true, or serve with SERVE_PRECISION=fp32)"
        )
    if variant.format in OLD_INT8_FORMATS:
        raise ArtifactError(f"int8 variant format {variant.format!r} (TorchScript) is no longer "
                            f"served: retrain with int8=true to get {INT8_FORMAT!r}, or serve "
                            "with SERVE_PRECISION=fp32")
    if not known_format(variant.format, INT8_FORMAT):
        raise ArtifactError(f"int8 variant format {variant.format!r} is not {INT8_FORMAT!r}")
    if variant.threads and variant.threads != threads:
        # Unlike the compiled variant there is no other int8 graph to fall back to, and the
        # package gives the same answers with any thread count: only its speed is tuned.
        _log.warning("int8 variant is specialised for %d thread(s) per worker; this worker runs "
                     "%d: it serves, slower than with %d", variant.threads, threads,
                     variant.threads)
        threads = variant.threads
    return load_package_variant(model_dir, INT8, variant, threads)


def write_int8_variant(
    model_dir: str | os.PathLike[str],
    model: nn.Module,
    manifest: Manifest,
    calibration_paths: Sequence[str | os.PathLike[str]],
    check_paths: Sequence[str | os.PathLike[str]] = (),
    fp32_modules: Sequence[str] = FP32_MODULES,
) -> Manifest:
    """Quantize, compile ``model_int8.pt2``, measure top-1 agreement, rewrite manifest.json.

    ``check_paths`` (held-out images, e.g. the validation split) measure agreement with fp32;
    without them the calibration images do. Agreement is measured on the package as serving
    loads it. Returns the manifest as written.
    """
    from model_artifact.network import WithFeatures, file_sha256, gives_features

    pre = manifest.preprocessing
    if not calibration_paths:
        raise ArtifactError("int8 calibration needs at least one training image")
    model = model.to("cpu").eval()
    if gives_features(manifest):  # one more graph output, the pooled features; same layers
        model = WithFeatures(model)
        fp32_modules = tuple(map(WithFeatures.module_name, fp32_modules))
    quantized = quantize_int8(model, image_batches(calibration_paths, pre), fp32_modules)
    path = compile_int8(quantized, pre.crop_size, Path(model_dir) / INT8_FILE)
    variant = Variant(file=INT8_FILE, sha256=file_sha256(path),
                      format=package_format(INT8_FORMAT, gives_features(manifest)),
                      calibration_images=len(calibration_paths), torch=torch.__version__,
                      threads=SERVING_THREADS)
    int8 = load_int8(model_dir, manifest.with_variant(INT8, variant))
    saved = torch.get_num_threads()
    torch.set_num_threads(SERVING_THREADS)
    try:
        agreement = measure_agreement(model.to(memory_format=torch.channels_last), int8,
                                      image_batches(check_paths or calibration_paths, pre))
    finally:
        torch.set_num_threads(saved)
    variant = replace(variant, top1_agreement=agreement.top1, agreement_images=agreement.images,
                      max_logit_difference=agreement.max_logit_difference)
    manifest = manifest.with_variant(INT8, variant)
    manifest.write(model_dir)
    return manifest
