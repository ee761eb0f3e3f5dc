"""The models one MMS worker holds in multi-model mode, by name; models whose manifests
name the same backbone (``backbone_sha256``) share one copy of it.

A model without a fingerprint (or with int8 or compiled serving forced) loads whole, exactly
as single-model serving does (inference.load_served). A fingerprinted model is served as the
shared backbone (the fp32 frozen TorchScript graph, or eager with SERVE_GRAPH=eager) followed
by its own head: one invocation runs the backbone once. The first model with a fingerprint
loads whole (weights_sha256 checked) and its backbone's fingerprint is recomputed from the
bytes, so the backbone is registered under what it really is; later models with that
fingerprint load only their head (checked against head_sha256). The trust argument is in
docs/serving-api.md. Before loading, the worker checks that the model would fit in the memory
left (InsufficientMemory, 507: SageMaker then unloads another model and retries).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from container_serve.errors import InsufficientMemory
from container_serve.inference import ServedModel, _freeze, load_served
from container_serve.model_registry import available_memory_bytes
from container_serve.settings import ServeSettings
from model_artifact.calibration import serving_temperature
from model_artifact.manifest import ArtifactError, Manifest
from model_artifact.network import HEAD_PREFIX, backbone_sha256, head_sha256, load_artifact
from model_artifact.novelty import load_feature_gaussian
from model_artifact.self_test import load_self_test, run_self_test
from model_artifact.torch_warnings import quiet

logger = logging.getLogger(__name__)

# Loading holds the state_dict, the eager network and the frozen graph at once: about three
# copies of the weights at the peak.
LOAD_PEAK_FACTOR = 3


def check_fits(name: str, need: int) -> None:
    """InsufficientMemory when ``need`` bytes are more than the memory left."""
    free = available_memory_bytes()
    if free is not None and need > free:
        raise InsufficientMemory(f"model {name!r} needs about {need >> 20} MiB to load; "
                                 f"{max(free, 0) >> 20} MiB are free")


class SharedHead(nn.Module):
    """A model served on a shared backbone: the backbone's features, then this model's head."""

    def __init__(self, backbone: nn.Module, head: nn.Linear, features: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.features = features  # answer (logits, pooled features): novelty.method features
        self.training = False  # both parts are in eval mode already; .eval() would walk them

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        pooled = self.backbone(images)
        return (self.head(pooled), pooled) if self.features else self.head(pooled)


@dataclass
class _Backbone:
    module: nn.Module  # the fp32 serving graph of everything but the head
    features: int  # the head's input width
    users: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class _Entry:
    served: ServedModel
    key: str = ""  # the shared backbone's fingerprint; "" = the model holds its own
    backbone: _Backbone | None = None


def _serving_graph(model: nn.Module, settings: ServeSettings, crop: int) -> nn.Module:
    """The backbone as single-model serving runs its network: channels_last, then traced and
    frozen (eager with SERVE_GRAPH=eager), warmed up before the first request."""
    example = torch.zeros(1, 3, crop, crop).contiguous(memory_format=torch.channels_last)
    model = model.to(memory_format=torch.channels_last)
    graph = model if settings.graph == "eager" else _freeze(model, example)
    with quiet(), torch.inference_mode():
        for _ in range(3 if isinstance(graph, torch.jit.ScriptModule) else 1):
            graph(example)
    return graph


def _head_state(path: Path, manifest: Manifest) -> dict[str, torch.Tensor]:
    """The head's tensors from the artifact's head file (prefix stripped); ArtifactError unless
    they hash to the manifest's head_sha256."""
    try:
        head = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ArtifactError(f"{path}: head file named by the manifest is missing") from None
    except Exception as exc:  # pickle errors, truncated zip, disallowed globals
        raise ArtifactError(f"{path}: cannot be loaded as a state_dict: {exc}") from None
    if not isinstance(head, dict) or not all(
            isinstance(k, str) and k.startswith(HEAD_PREFIX) for k in head):
        raise ArtifactError(f"{path}: expected the head's tensors ({HEAD_PREFIX}*) alone")
    if head_sha256(head) != manifest.head_sha256:
        raise ArtifactError(f"{path}: the head's tensors do not match the manifest's "
                            "head_sha256")
    return {name.removeprefix(HEAD_PREFIX): tensor for name, tensor in head.items()}


def _head(path: Path, manifest: Manifest, features: int) -> nn.Linear:
    """The model's own last layer, Linear(features, num_classes), from its head file."""
    head = nn.Linear(features, manifest.num_classes, device="meta")  # no init: loaded next
    try:
        head.load_state_dict(_head_state(path, manifest), strict=True, assign=True)
    except RuntimeError as exc:
        raise ArtifactError(f"{path}: the head does not fit the shared backbone "
                            f"({features} features) and {manifest.num_classes} classes: "
                            f"{str(exc).strip().splitlines()[0]}") from None
    return head.eval()


class ResidentModels:
    """Name -> ServedModel for one worker process. Thread-safe (MMS may call from threads);
    loads run one at a time, so two models never build the same backbone twice."""

    def __init__(self, settings: ServeSettings) -> None:
        self._settings = settings
        self._models: dict[str, _Entry] = {}
        self._backbones: dict[str, _Backbone] = {}
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        torch.set_num_threads(settings.threads_per_worker)

    def load(self, name: str, model_dir: str) -> ServedModel:
        """Load ``model_dir`` as ``name``; ArtifactError on a bad artifact, InsufficientMemory
        when it would not fit. Loading a name again replaces the model."""
        with self._load_lock:
            manifest = Manifest.read(model_dir)
            if not self._shares(manifest):
                check_fits(name, LOAD_PEAK_FACTOR * _weights_size(model_dir, manifest))
                entry = _Entry(load_served(model_dir, self._settings))
            elif manifest.backbone_sha256 in self.backbone_users():
                entry = self._load_head(name, model_dir, manifest)
            else:
                entry = self._load_with_backbone(name, model_dir, manifest)
            with self._lock:
                self._forget(name)
                self._models[name] = entry
                if entry.backbone is not None:  # registered only once the load succeeded
                    self._backbones.setdefault(entry.key, entry.backbone).users.add(name)
            logger.info("model %s loaded from %s: %s graph", name, model_dir, entry.served.graph)
            return entry.served

    def get(self, name: str) -> ServedModel:
        with self._lock:
            return self._models[name].served

    def unload(self, name: str) -> None:
        """Forget ``name``; its backbone goes with its last user. KeyError when not loaded."""
        with self._lock:
            if name not in self._models:
                raise KeyError(name)
            self._forget(name)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def backbone_users(self) -> dict[str, int]:
        """Resident shared backbones: fingerprint -> how many loaded models use it."""
        with self._lock:
            return {key: len(b.users) for key, b in self._backbones.items()}

    def _forget(self, name: str) -> None:
        """Drop ``name`` (if loaded) and its backbone when no other model uses it; under _lock."""
        entry = self._models.pop(name, None)
        if entry is not None and entry.key:
            backbone = self._backbones[entry.key]
            backbone.users.discard(name)
            if not backbone.users:
                del self._backbones[entry.key]

    def _shares(self, manifest: Manifest) -> bool:
        """fp32 fingerprinted models share; int8 and forced compiled serving are whole-model
        graphs (a head cannot be split off them). On cuda every model loads whole onto the GPU
        (inference.load_served): the shared backbones are a CPU path."""
        return (self._settings.precision != "int8" and self._settings.graph != "compiled"
                and self._settings.device == "cpu"
                and bool(manifest.backbone_sha256 and manifest.head_sha256
                         and manifest.head_file))

    def _served(self, model_dir: str, manifest: Manifest, backbone: _Backbone, head: nn.Linear
                ) -> ServedModel:
        gaussian = load_feature_gaussian(model_dir, manifest)
        model = SharedHead(backbone.module, head, gaussian is not None)
        if gaussian is not None and gaussian.whitening.shape[0] != backbone.features:
            raise ArtifactError(f"the novelty file expects {gaussian.whitening.shape[0]} "
                                f"features, the backbone gives {backbone.features}")
        with torch.inference_mode():
            out = head(torch.zeros(1, backbone.features))
        if out.shape != (1, manifest.num_classes):
            raise ArtifactError(f"the head gives {tuple(out.shape)} outputs, the manifest has "
                                f"{manifest.num_classes} classes")
        graph = "eager" if self._settings.graph == "eager" else "frozen"
        temperature = serving_temperature(manifest.calibration, self._settings.calibration)
        return ServedModel(model, manifest, manifest.preprocessing.transform(), self._settings,
                           f"{graph}-shared", temperature, gaussian)

    def _load_head(self, name: str, model_dir: str, manifest: Manifest) -> _Entry:
        """Only the head: the backbone with this fingerprint is resident already."""
        with self._lock:
            backbone = self._backbones[manifest.backbone_sha256]
        check_fits(name, 2 * 4 * (backbone.features + 1) * manifest.num_classes)
        head = _head(Path(model_dir) / manifest.head_file, manifest, backbone.features)
        served = _self_tested(model_dir, self._served(model_dir, manifest, backbone, head))
        return _Entry(served, manifest.backbone_sha256, backbone)

    def _load_with_backbone(self, name: str, model_dir: str, manifest: Manifest) -> _Entry:
        """The whole model (weights_sha256 checked); its backbone becomes the shared one, under
        the fingerprint of its bytes (a manifest that misnames it is logged, not believed)."""
        check_fits(name, LOAD_PEAK_FACTOR * _weights_size(model_dir, manifest))
        model, manifest = load_artifact(model_dir, manifest)
        key = backbone_sha256(model.state_dict())
        if key != manifest.backbone_sha256:
            logger.warning("%s: backbone_sha256 in the manifest is not the weights' (%s); the "
                           "model shares only with backbones equal to its own", model_dir, key)
        head, model.fc = model.fc, nn.Identity()
        graph = _serving_graph(model, self._settings, manifest.preprocessing.crop_size)
        with self._lock:
            backbone = self._backbones.get(key) or _Backbone(graph, head.in_features)
        served = _self_tested(model_dir, self._served(model_dir, manifest, backbone,
                                                      head.eval()))
        return _Entry(served, key, backbone)


def _self_tested(model_dir: str, served: ServedModel) -> ServedModel:
    """The shared backbone with this head must answer the artifact's held-out inputs as the
    training job did (model_artifact.self_test); SelfTestError (an ArtifactError) refuses this
    model only, the server goes on."""
    loaded = load_self_test(model_dir, served.manifest)
    if loaded is not None:
        run_self_test(served.model, served.graph, *loaded)
    return served


def _weights_size(model_dir: str, manifest: Manifest) -> int:
    weights = Path(model_dir) / manifest.weights_file
    return weights.stat().st_size if weights.is_file() else 0
