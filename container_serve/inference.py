"""model_fn / input_fn / predict_fn / output_fn: request bytes -> top-k JSON.

Decoding and preprocessing come from ``model_artifact`` (the definitions training evaluates
with), configured by the artifact's manifest, so served probabilities equal training's.
Client mistakes raise ``errors.ServeError`` subclasses; the transformer turns them into 4xx.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from PIL.Image import Image
from torch import nn

from container_serve.env_names import MAX_REQUEST_PIXELS_ENV
from container_serve.errors import (
    BadRequest,
    NotAcceptable,
    PayloadTooLarge,
    ServeError,
    UnsupportedMediaType,
)
from container_serve.media import IMAGE_TYPES, JSON, unsupported
from container_serve.settings import ServeSettings
from container_serve.startup_check import self_tested
from model_artifact.calibration import serving_temperature
from model_artifact.compiled import load_compiled
from model_artifact.manifest import COMPILED, INT8, ArtifactError, Manifest
from model_artifact.network import WithFeatures, gives_features, load_artifact, split_output
from model_artifact.novelty import (
    FeatureGaussian,
    feature_scores,
    load_feature_gaussian,
    novelty_scores,
)
from model_artifact.preprocess import (
    FORMAT_NAMES,
    HEADER_SIZE,
    MAX_HEADER_PIXELS,
    ImageDecodeError,
    ImageTooLargeError,
    decode,
    open_image,
    resized_pixels,
    sniff,
)
from model_artifact.quantize import agreement_warning, load_int8
from model_artifact.torch_warnings import quiet

logger = logging.getLogger(__name__)
ACCEPTABLE = frozenset({JSON, "application/*", "*/*"})
CUSTOM_ATTRIBUTES = "x-amzn-sagemaker-custom-attributes"

_Q_ZERO = re.compile(r"(^|;)\s*q\s*=\s*0(\.0*)?\s*$")


@dataclass(frozen=True)
class ServedModel:
    model: nn.Module
    manifest: Manifest
    transform: Callable[[Any], torch.Tensor]
    settings: ServeSettings
    graph: str = "eager"  # compiled | frozen | eager | int8 | frozen-shared | eager-shared
    temperature: float = 1.0  # the logits are divided by it (calibration; 1.0: none or off)
    gaussian: FeatureGaussian | None = None  # novelty.method features: novelty.pt's tensors


@dataclass(frozen=True)
class Prediction:
    probabilities: torch.Tensor  # [images, classes], rows sum to 1
    class_names: tuple[str, ...]
    # "None of my classes" (docs/serving-api.md): per-image score and the artifact's threshold;
    # None when the artifact has no novelty detector.
    novelty_scores: torch.Tensor | None = None
    novelty_threshold: float | None = None


def media_type(content_type: str | None) -> str | None:
    """'Image/JPEG; charset=x' -> 'image/jpeg'; None or blank -> None."""
    if not content_type:
        return None
    return content_type.split(";", 1)[0].strip().lower() or None


def check_accept(accept: str | None) -> None:
    """We only produce JSON: accept a missing header, */*, application/* or application/json."""
    if not accept or not accept.strip():
        return
    for part in accept.split(","):
        media, _, params = part.partition(";")
        if media.strip().lower() in ACCEPTABLE and not _Q_ZERO.search(params):
            return
    raise NotAcceptable(f"cannot answer in {accept!r}; this endpoint produces {JSON}")


def parse_top_k(custom_attributes: str | None, settings: ServeSettings) -> int:
    """``top_k=N`` from SageMaker's CustomAttributes (``k=v`` pairs split by ';' or ',')."""
    for part in re.split(r"[;,]", custom_attributes or ""):
        key, _, value = part.partition("=")
        if key.strip().lower() != "top_k":
            continue
        try:
            k = int(value.strip())
        except ValueError:
            raise BadRequest(f"top_k must be an integer, got {value.strip()[:40]!r}") from None
        if k < 1:
            raise BadRequest(f"top_k must be at least 1, got {k}")
        return min(k, settings.top_k_max)
    return settings.top_k


def parse_abstain(custom_attributes: str | None) -> bool:
    """``abstain=false`` in CustomAttributes: answer without the abstain fields (as before they
    existed); ``abstain=true`` or nothing: with them (when the artifact has a detector)."""
    for part in re.split(r"[;,]", custom_attributes or ""):
        key, _, value = part.partition("=")
        if key.strip().lower() != "abstain":
            continue
        flag = value.strip().lower()
        if flag not in ("true", "false"):
            raise BadRequest(f"abstain must be true or false, got {value.strip()[:40]!r}")
        return flag == "true"
    return True


def _decode_base64(item: Any, where: str) -> bytes:
    if not isinstance(item, str):
        raise BadRequest(f"{where} must be a base64 string, got {type(item).__name__}")
    if item.startswith("data:"):  # data URL: data:image/png;base64,....
        item = item.partition(",")[2]
    text = "".join(item.split()).replace("-", "+").replace("_", "/")  # MIME or URL-safe
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{where} is not valid base64") from None


def _parse_json(raw: bytes) -> Any:
    """UTF-8 JSON (RFC 8259) -> a Python value; anything the parser refuses is a 400."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in raw[:4]:
        # json.loads(bytes) would sniff UTF-16/32 and accept them; the contract is UTF-8.
        raise BadRequest("JSON body is UTF-16 or UTF-32, not UTF-8")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("JSON body is not UTF-8") from None
    try:
        return json.loads(text.removeprefix("\ufeff"))  # a UTF-8 BOM is tolerated
    except json.JSONDecodeError as exc:
        raise BadRequest(f"body is not valid JSON: {exc.msg} at position {exc.pos}") from None
    except RecursionError:  # '[[[[...' a few thousand deep: json's C parser recurses
        raise BadRequest("JSON body is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits (int conversion)
        raise BadRequest(f"body is not valid JSON: {str(exc).split(';')[0]}") from None


def _images_from_json(raw: bytes, settings: ServeSettings) -> list[bytes]:
    doc = _parse_json(raw)
    if isinstance(doc, dict) and "image" in doc:
        items, where = [doc["image"]], "image"
    elif isinstance(doc, dict) and isinstance(doc.get("images"), list):
        items, where = doc["images"], "images"
    elif isinstance(doc, list):
        items, where = doc, "body"
    else:
        raise BadRequest('JSON body must be {"image": b64}, {"images": [b64, ...]} or [b64, ...]')
    if not items:
        raise BadRequest("the request holds no images")
    if len(items) > settings.max_images:
        raise PayloadTooLarge(f"{len(items)} images; the limit is {settings.max_images}")
    if where == "image":
        return [_decode_base64(items[0], where)]
    return [_decode_base64(item, f"{where}[{i}]") for i, item in enumerate(items)]


def _freeze(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """Trace + freeze + optimize once per worker: BatchNorm folded into the convolutions,
    weights turned into constants, oneDNN convolutions with fused ReLUs, no Python between
    layers. Same maths as eager within float rounding (logits within 1e-4 at batch 1-16).
    optimize_for_inference on top of freeze: measured faster (bench/README.md, serving)."""
    with quiet(), torch.inference_mode():
        traced = torch.jit.trace(model, example, check_trace=False)
        return torch.jit.optimize_for_inference(traced.eval())


def _fp32_model(model_dir: str, manifest: Manifest, settings: ServeSettings, example: torch.Tensor
                ) -> tuple[nn.Module, Manifest, str]:
    """The fp32 network in the form SERVE_GRAPH asks for, with the name of that form."""
    if settings.graph == "compiled" or (settings.graph == "auto"
                                        and COMPILED in manifest.variants):
        try:
            compiled = load_compiled(model_dir, manifest, settings.threads_per_worker,
                                     bf16=settings.precision == "auto")
            return compiled, manifest, compiled.target.graph
        except ArtifactError as exc:
            if settings.graph == "compiled":
                raise
            logger.warning("compiled variant not used (%s); serving the TorchScript graph", exc)
    fp32, manifest = load_artifact(model_dir, manifest)
    # channels_last: oneDNN's faster convolution layout on CPU, and the one training evaluates in.
    model = _features_if_scored(fp32.to(memory_format=torch.channels_last), manifest)
    if settings.graph == "eager":
        return model, manifest, "eager"
    return _freeze(model, example), manifest, "frozen"


def _features_if_scored(model: nn.Module, manifest: Manifest) -> nn.Module:
    """The network answering (logits, features) when the novelty score needs the features."""
    return WithFeatures(model) if gives_features(manifest) else model


class OnDevice(nn.Module):
    """A network on the GPU behind the CPU interface the rest of serving uses: takes the CPU
    batch (decoded and preprocessed on the CPU as today), moves it to the device in the
    network's dtype, and gives the logits back on the CPU as float32."""

    def __init__(self, network: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.network, self.device, self.dtype = network, device, dtype

    def forward(self, batch: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        on_device = batch.to(self.device, self.dtype, non_blocking=True)
        out = self.network(on_device)
        if isinstance(out, tuple):  # (logits, features): WithFeatures
            return tuple(part.float().cpu() for part in out)
        return out.float().cpu()


def half_supported(device: torch.device) -> bool:
    """fp16 where the GPU has tensor cores for it (compute capability 7.0 and later: V100, T4,
    A10G, A100, H100...); fp32 on older GPUs, where fp16 brings little."""
    return torch.cuda.get_device_capability(device) >= (7, 0)


def _cuda_model(model_dir: str, manifest: Manifest, settings: ServeSettings
                ) -> tuple[nn.Module, Manifest, str]:
    """The eager network on the GPU, fp16 where supported. The compiled (AOTInductor) and int8
    variants are CPU code: on cuda the state_dict's network serves, and one line says so."""
    if (settings.precision == "int8" or settings.graph in ("compiled", "frozen")
            or {COMPILED, INT8} & set(manifest.variants)):
        logger.warning("SERVE_PRECISION=%s SERVE_GRAPH=%s: the compiled, frozen and int8 graphs "
                       "are CPU-only; serving the eager network on cuda", settings.precision,
                       settings.graph)
    fp32, manifest = load_artifact(model_dir, manifest)
    device = torch.device("cuda")
    dtype = torch.float16 if half_supported(device) else torch.float32
    network = _features_if_scored(fp32, manifest).to(
        device, dtype, memory_format=torch.channels_last).eval()
    name = "cuda-fp16" if dtype == torch.float16 else "cuda-fp32"
    return OnDevice(network, device, dtype), manifest, name


def model_fn(model_dir: str) -> ServedModel:
    """Manifest + weights -> a model ready to serve; ArtifactError names the file.

    fp32 (default): the artifact's compiled variant (AOTInductor, model_artifact.compiled)
    when it loads on this machine, else the state_dict (``weights_only=True``), channels_last,
    traced and frozen; ``SERVE_GRAPH`` forces one (compiled | frozen | eager).
    ``SERVE_PRECISION=int8``: the manifest's int8 variant, an AOTInductor package checked like
    the compiled one (model_artifact.quantize); absent or refused -> ArtifactError.
    Everything that can be done once is done here, so a request only decodes and runs forward.
    """
    return load_served(model_dir, ServeSettings.from_env())


def load_served(model_dir: str, settings: ServeSettings) -> ServedModel:
    """model_fn with the settings given: the loading multi-model mode shares (resident_models)."""
    torch.set_num_threads(settings.threads_per_worker)
    manifest = Manifest.read(model_dir)
    gaussian = load_feature_gaussian(model_dir, manifest)  # checked before any graph is built
    model: nn.Module
    size = manifest.preprocessing.crop_size
    example = torch.zeros(1, 3, size, size).contiguous(memory_format=torch.channels_last)
    if settings.device == "cuda":
        model, manifest, graph = _cuda_model(model_dir, manifest, settings)
    elif settings.precision == "int8":
        model = load_int8(model_dir, manifest, settings.threads_per_worker)
        graph = "int8"
        if warning := agreement_warning(manifest.variants[INT8]):
            logger.warning(warning)
    else:
        model, manifest, graph = _fp32_model(model_dir, manifest, settings, example)
    out = _warmed_up(model, example)
    if gives_features(manifest) and split_output(out)[1] is None:
        # A package written before the features score answers the logits alone.
        logger.warning("the %s graph gives no pooled features (a package from before "
                       "novelty.method features); serving the TorchScript graph", graph)
        model, manifest, graph = _fp32_model(model_dir, manifest,
                                             replace(settings, graph="frozen"), example)
        out = _warmed_up(model, example)
    _check_output(out, manifest, gaussian, f"{model_dir}: the {settings.precision} model")
    # Serving's self-test (startup_check): the graph that will serve, on this CPU and thread
    # count, against training's logits; auto falls back from a compiled variant that fails.
    model, graph = self_tested(model_dir, manifest, model, graph, settings, lambda: _fp32_model(
        model_dir, manifest, replace(settings, graph="frozen"), example))
    temperature = serving_temperature(manifest.calibration, settings.calibration)
    logger.info("serving %s: %s graph, %d thread(s), batches of up to %d request(s), "
                "temperature %g, novelty detector %s", model_dir, graph,
                settings.threads_per_worker, settings.batch_size, temperature,
                manifest.novelty.method if manifest.novelty else "none")
    return ServedModel(model, manifest, manifest.preprocessing.transform(), settings, graph,
                       temperature, gaussian)


def _warmed_up(model: nn.Module, example: torch.Tensor) -> Any:
    """Warm-up: allocation, and TorchScript's profiling runs, before the first client. Returns
    the last output."""
    with quiet(), torch.inference_mode():
        for _ in range(3 if isinstance(model, torch.jit.ScriptModule) else 1):
            out = model(example)
    return out


def _check_output(out: Any, manifest: Manifest, gaussian: FeatureGaussian | None,
                  what: str) -> None:
    """ArtifactError unless the graph gives one logit per class and, when scored, features as
    wide as novelty.pt's whitening matrix."""
    logits, features = split_output(out)
    if logits.shape != (1, manifest.num_classes):
        raise ArtifactError(f"{what} gives outputs of shape {tuple(logits.shape)}, the manifest "
                            f"has {manifest.num_classes} classes")
    if gaussian is not None and (features is None or features.shape[-1]
                                 != gaussian.whitening.shape[0]):
        raise ArtifactError(f"{what} gives features of shape "
                            f"{None if features is None else tuple(features.shape)}; the "
                            f"novelty file expects {gaussian.whitening.shape[0]}")


def input_fn(
    input_data: bytes | str | None, content_type: str | None, settings: ServeSettings
) -> list[bytes]:
    """Request body -> encoded images, checked for type, size and count (not yet decoded)."""
    media = media_type(content_type) or "application/octet-stream"  # none given: sniff
    if media not in IMAGE_TYPES and media != JSON:
        raise UnsupportedMediaType(unsupported(media))
    # The toolkit hands JSON over UTF-8 decoded; we take bytes or str alike.
    raw = input_data.encode("utf-8") if isinstance(input_data, str) else bytes(input_data or b"")
    if len(raw) > settings.max_request_bytes:
        raise PayloadTooLarge(
            f"request body is {len(raw)} bytes; the limit is {settings.max_request_bytes}"
        )
    if not raw:
        raise BadRequest("request body is empty")
    images = _images_from_json(raw, settings) if media == JSON else [raw]
    for i, data in enumerate(images):
        where = f"image {i}" if len(images) > 1 else "image"
        if not data:
            raise BadRequest(f"{where} is empty")
        if sniff(data) is None:
            raise BadRequest(f"{where} is not a {FORMAT_NAMES} file")
    return images


@contextmanager
def _client_errors(where: str) -> Iterator[None]:
    """Decoding errors -> 413 (too large) or 400, the message prefixed with the image."""
    try:
        yield
    except ImageTooLargeError as exc:
        raise PayloadTooLarge(f"{where}{exc}") from None
    except ImageDecodeError as exc:
        raise BadRequest(f"{where}{exc}") from None


def _check_request_pixels(images: list[Image], resize: int, settings: ServeSettings) -> None:
    """The batch's cost from the headers, before anything is decoded: per image the larger of
    the pixels decoded and the pixels Resize makes, summed; and the pixels the headers claim,
    summed (a JPEG's decoder reads all of them even at 1/8 scale: a progressive one buffers
    ~3 bytes per header pixel). Each image passing its own limits is not enough: 16 of them
    would cost 16 times as much."""
    total = sum(max(w * h, resized_pixels((w, h), resize)) for w, h in (i.size for i in images))
    if total > settings.max_request_pixels:
        raise PayloadTooLarge(
            f"the {len(images)} images would decode and resize to {total} pixels in all; the "
            f"limit per request is {settings.max_request_pixels} pixels ({MAX_REQUEST_PIXELS_ENV})"
        )
    claimed = sum(w * h for w, h in (i.info[HEADER_SIZE] for i in images))
    if claimed > MAX_HEADER_PIXELS:
        raise PayloadTooLarge(
            f"the {len(images)} image headers claim {claimed} pixels in all; the limit per "
            f"request is {MAX_HEADER_PIXELS} header pixels"
        )


def _preprocess(images: list[bytes], served: ServedModel) -> list[torch.Tensor]:
    """Decode + preprocess exactly as evaluation does. Every header is read and checked (per
    image, then the request's total) before any image is decoded."""
    pre = served.manifest.preprocessing
    limit = served.settings.max_pixels
    opened = []
    for i, data in enumerate(images):
        with _client_errors(f"image {i}: " if len(images) > 1 else ""):
            opened.append(open_image(data, min_side=pre.min_side, max_pixels=limit,
                                     resize=pre.resize))
    _check_request_pixels(opened, pre.resize, served.settings)
    tensors = []
    for i, image in enumerate(opened):
        with _client_errors(f"image {i}: " if len(images) > 1 else ""):
            tensors.append(served.transform(decode(image)))
    return tensors


def _forward(tensors: list[torch.Tensor], served: ServedModel) -> Prediction:
    with torch.inference_mode():
        # One forward for the whole batch.
        batch = torch.stack(tensors).contiguous(memory_format=torch.channels_last)
        logits, features = split_output(served.model(batch))
        logits = logits.float()
        probabilities = torch.softmax(logits / served.temperature, dim=1)
    novelty = served.manifest.novelty  # scored on the raw logits, whatever SERVE_CALIBRATION
    return Prediction(probabilities, served.manifest.class_names,
                      _scores(logits, features, served),
                      None if novelty is None else novelty.threshold)


def _scores(logits: torch.Tensor, features: torch.Tensor | None, served: ServedModel
            ) -> torch.Tensor | None:
    """The novelty score per image: from the pooled features (novelty.pt) for the features
    method, from the logits otherwise; None without a detector."""
    novelty = served.manifest.novelty
    if novelty is None:
        return None
    if novelty.method != "features":
        return novelty_scores(logits, novelty)
    if features is None or served.gaussian is None:  # load_served makes sure it never is
        return torch.full((logits.shape[0],), math.nan, dtype=torch.float64)
    return feature_scores(features, served.gaussian)


def predict_fn(images: list[bytes], served: ServedModel) -> Prediction:
    """Decode + preprocess exactly as evaluation does, then one forward pass for the batch."""
    return _forward(_preprocess(images, served), served)


def _rows(prediction: Prediction, start: int, stop: int) -> Prediction:
    """Images ``start:stop`` of a shared forward pass: one request's Prediction."""
    scores = prediction.novelty_scores
    return replace(prediction, probabilities=prediction.probabilities[start:stop],
                   novelty_scores=None if scores is None else scores[start:stop])


def predict_requests(requests: list[list[bytes]], served: ServedModel
                     ) -> list[Prediction | ServeError]:
    """predict_fn for several requests (MMS batching, docs/serving-api.md): each request's
    images are checked and decoded on their own, so a bad one gets its own error; the images
    of every good request share one forward pass. One answer per request, in order."""
    answers: list[Prediction | ServeError | None] = []
    tensors: list[torch.Tensor] = []
    spans: list[tuple[int, int]] = []
    for images in requests:
        try:
            decoded = _preprocess(images, served)
        except ServeError as exc:
            answers.append(exc)
            continue
        spans.append((len(tensors), len(tensors) + len(decoded)))
        tensors.extend(decoded)
        answers.append(None)
    if tensors:
        shared = _forward(tensors, served)
        rows = iter(spans)
        answers = [_rows(shared, *next(rows)) if a is None else a for a in answers]
    return answers  # type: ignore[return-value]  # every None was replaced


def image_result(prediction: Prediction, i: int, top_k: int,
                 abstain: bool = True) -> dict[str, Any]:
    """Image ``i``'s answer: {"top_k": [...]}, most probable first, plus "abstain",
    "novelty_score" and "novelty_threshold" when the artifact has a novelty detector and
    ``abstain`` (the client did not send abstain=false). docs/serving-api.md is the contract."""
    k = min(top_k, len(prediction.class_names))
    values, indices = torch.topk(prediction.probabilities[i], k)
    result: dict[str, Any] = {"top_k": [
        {"label": prediction.class_names[j], "index": j, "probability": p}
        for p, j in zip(values.tolist(), indices.tolist(), strict=True)]}
    if abstain and prediction.novelty_scores is not None:
        score = float(prediction.novelty_scores[i])
        finite = math.isfinite(score)  # a non-finite score (NaN logits) is not an answer
        result["abstain"] = not finite or score > prediction.novelty_threshold
        result["novelty_score"] = score if finite else None
        result["novelty_threshold"] = prediction.novelty_threshold
    return result


def output_fn(prediction: Prediction, accept: str | None, top_k: int,
              abstain: bool = True) -> str:
    """{"predictions": [image_result, ...]}, one per image in request order."""
    check_accept(accept)
    images = prediction.probabilities.shape[0]
    return json.dumps({"predictions": [image_result(prediction, i, top_k, abstain)
                                       for i in range(images)]})
