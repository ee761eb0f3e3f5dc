"""The optional int8 variant of an artifact: static post-training quantization for x86 CPUs.

Recipe: torch.ao FX graph mode quantization with the ``x86`` backend's default qconfig
(per-channel symmetric int8 weights, per-tensor affine uint8 activations, histogram observers),
calibrated with the artifact's own *evaluation* preprocessing on training images; then
``torch.jit.trace`` + ``torch.jit.freeze``, saved with ``torch.jit.save``.

Loading is ``torch.jit.load`` of that file: TorchScript is a graph format read by TorchScript's
own deserializer (no Python pickle of arbitrary classes), and serving refuses the file unless
the manifest gives its sha256 and the file matches it. The file is still code in the
TorchScript sense (a graph of operators), so only load artifacts you trust to the same degree
as the manifest.

The training job writes it (model_artifact.writer.write_int8) after the fp32 artifact when the
hyperparameter ``int8`` is true; serving picks the variant with ``SERVE_PRECISION=int8``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from job_contract.hyperparameters import INT8_CALIBRATION_IMAGES
from model_artifact.agreement import measure_agreement
from model_artifact.manifest import INT8, MANIFEST_FILE, ArtifactError, Manifest, Variant
from model_artifact.preprocess import image_batches
from model_artifact.torch_warnings import quiet

INT8_FILE = "model_int8.pt"
INT8_FORMAT = "torchscript-fx-x86-int8"
BACKEND = "x86"
CALIBRATION_IMAGES = INT8_CALIBRATION_IMAGES
# Below this share of top-1 answers in common with fp32, int8 visibly changes what the
# endpoint answers: training and serving both say so (bench/serving_speed.py holds int8 to it).
AGREEMENT_BAR = 0.99


def use_x86_engine() -> None:
    if BACKEND not in torch.backends.quantized.supported_engines:
        raise ArtifactError(
            f"this torch build has no '{BACKEND}' quantized engine "
            f"(has {torch.backends.quantized.supported_engines})"
        )
    torch.backends.quantized.engine = BACKEND


def quantize_int8(model: nn.Module, calibration: Iterable[torch.Tensor]) -> torch.jit.ScriptModule:
    """fp32 model (eval) + calibration batches -> frozen TorchScript int8 model.

    The input model is not modified (FX works on a traced copy).
    """
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    batches = iter(calibration)
    first = next(batches, None)
    if first is None:
        raise ArtifactError("int8 calibration needs at least one image")
    use_x86_engine()
    with quiet():
        model = copy.deepcopy(model).to("cpu", memory_format=torch.contiguous_format).eval()
        prepared = prepare_fx(model, get_default_qconfig_mapping(BACKEND), (first[:1],))
        with torch.inference_mode():
            prepared(first)
            for batch in batches:
                prepared(batch)
        quantized = convert_fx(prepared).eval()
        example = first[:1].contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            traced = torch.jit.trace(quantized, example, check_trace=False)
            frozen = torch.jit.freeze(traced.eval())
    return frozen


def agreement_warning(variant: Variant) -> str | None:
    """One line when the variant's recorded top-1 agreement with fp32 is under the bar."""
    if variant.top1_agreement is None or variant.top1_agreement >= AGREEMENT_BAR:
        return None
    return (f"int8 variant gives fp32's top-1 class for {variant.top1_agreement:.1%} of "
            f"{variant.agreement_images} held-out images (bar {AGREEMENT_BAR:.0%}): its answers "
            "differ from the fp32 model's; compare them before serving SERVE_PRECISION=int8")


def save_int8(module: torch.jit.ScriptModule, path: str | os.PathLike[str]) -> Path:
    with quiet():
        torch.jit.save(module, str(path))
    return Path(path)


def load_int8(model_dir: str | os.PathLike[str], manifest: Manifest) -> torch.jit.ScriptModule:
    """The manifest's int8 variant, hash-checked, via ``torch.jit.load``; ArtifactError if not."""
    variant = manifest.variants.get(INT8)
    if variant is None:
        raise ArtifactError(
            f"{Path(model_dir) / MANIFEST_FILE}: no int8 variant (train with the "
            f"hyperparameter int8=true, or serve with SERVE_PRECISION=fp32)"
        )
    if variant.format != INT8_FORMAT:
        raise ArtifactError(f"int8 variant format {variant.format!r} is not {INT8_FORMAT!r}")
    from model_artifact.network import verified_file

    path = verified_file(Path(model_dir) / variant.file, variant.required_sha256(INT8),
                         "int8 model file")
    use_x86_engine()
    try:
        with quiet():
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # not a TorchScript archive, truncated zip
        raise ArtifactError(f"{path}: cannot be loaded as TorchScript: {exc}") from None
    return module.eval()


def write_int8_variant(
    model_dir: str | os.PathLike[str],
    model: nn.Module,
    manifest: Manifest,
    calibration_paths: Sequence[str | os.PathLike[str]],
    check_paths: Sequence[str | os.PathLike[str]] = (),
) -> Manifest:
    """Quantize, save ``model_int8.pt``, measure top-1 agreement, rewrite manifest.json.

    ``check_paths`` (held-out images, e.g. the validation split) measure agreement with fp32;
    without them the calibration images do. Returns the manifest as written.
    """
    from model_artifact.network import file_sha256

    pre = manifest.preprocessing
    if not calibration_paths:
        raise ArtifactError("int8 calibration needs at least one training image")
    model = model.to("cpu").eval()
    int8 = quantize_int8(model, image_batches(calibration_paths, pre))
    path = save_int8(int8, Path(model_dir) / INT8_FILE)
    checked = check_paths or calibration_paths
    use_x86_engine()
    agreement = measure_agreement(model.to(memory_format=torch.channels_last), int8,
                                  image_batches(checked, pre))
    variant = Variant(
        file=INT8_FILE,
        format=INT8_FORMAT,
        sha256=file_sha256(path),
        calibration_images=len(calibration_paths),
        top1_agreement=agreement.top1,
        agreement_images=agreement.images,
    )
    manifest = manifest.with_variant(INT8, variant)
    manifest.write(model_dir)
    return manifest
