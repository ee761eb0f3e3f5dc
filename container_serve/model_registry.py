"""Multi-model mode: which models are loaded (name -> artifact directory), shared by the serve
process and the MMS workers through files in the private runtime directory; and the memory
check a load must pass. Torch-free: the serve process imports it.

The serve process (container_serve/management.py) is the only writer: POST /models verifies
the artifact and its memory estimate, then writes ``<runtime>/models/<sha256 of name>.json``;
DELETE /models/<name> removes it. Each change rewrites ``generation``, so a worker
(container_serve/multi_model.py) re-reads the registry only when something changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from model_artifact.files import verified_file
from model_artifact.manifest import Manifest

# nginx (front.py) sends /models/<name>/invoke to MMS's /invocations with the name, still
# percent-encoded, in this header; it clears the header on every other route.
MODEL_HEADER = "x-serve-model"
REGISTRY_DIR = "models"
GENERATION_FILE = "generation"
# An fp32 model held by a worker: the weights plus the frozen graph's copy of them (and the
# compiled variant's, when the workers run it): about twice the weights file.
RESIDENT_FACTOR = 2
# Kept free of models for the workers' own runtime (torch, MMS's JVM, nginx, buffers).
RESERVED_BYTES = 1 << 30
_CGROUP = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Registration:
    model_name: str
    url: str  # the unpacked artifact directory SageMaker gave
    token: str  # new at each load: a worker holding an older token reloads
    estimate_bytes: int  # memory the whole model takes in all the workers together
    # Models with the same backbone share it in a worker (resident_models.py): each adds its
    # head (head_bytes); the backbone is counted once (committed_bytes).
    backbone_sha256: str = ""
    head_bytes: int = 0

    def describe(self) -> dict[str, str]:
        """The contract's view of a model (GET /models, GET /models/<name>)."""
        return {"modelName": self.model_name, "modelUrl": self.url}


class Registry:
    def __init__(self, runtime_dir: str | os.PathLike[str]) -> None:
        self.root = Path(runtime_dir) / REGISTRY_DIR

    def _path(self, name: str) -> Path:
        # Names are opaque to us (any characters): the file name is their hash.
        return self.root / f"{hashlib.sha256(name.encode()).hexdigest()}.json"

    def clear(self) -> None:
        """A new server starts with no model loaded (a reused runtime dir keeps old files)."""
        if self.root.is_dir():
            for path in self.root.iterdir():
                path.unlink()
        self._changed()

    def generation(self) -> str:
        try:
            return (self.root / GENERATION_FILE).read_text()
        except OSError:
            return ""

    def _changed(self) -> None:
        self._write(self.root / GENERATION_FILE, uuid.uuid4().hex)

    def _write(self, path: Path, text: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(text)
        os.replace(temporary, path)  # a reader sees the old file or the new one, never half

    def add(self, registration: Registration) -> None:
        self._write(self._path(registration.model_name), json.dumps(asdict(registration)))
        self._changed()

    def remove(self, name: str) -> bool:
        try:
            self._path(name).unlink()
        except FileNotFoundError:
            return False
        self._changed()
        return True

    def lookup(self, name: str) -> Registration | None:
        try:
            return Registration(**json.loads(self._path(name).read_text()))
        except FileNotFoundError:
            return None

    def all(self) -> list[Registration]:
        """Every loaded model, sorted by name (the order pagination walks)."""
        if not self.root.is_dir():
            return []
        found = [Registration(**json.loads(p.read_text())) for p in self.root.glob("*.json")]
        return sorted(found, key=lambda r: r.model_name)


def committed_bytes(models: list[Registration]) -> int:
    """The memory estimate of these models together: a shared backbone counts once."""
    total, backbones = 0, {}
    for model in models:
        if model.backbone_sha256 and model.head_bytes:
            total += model.head_bytes
            backbones[model.backbone_sha256] = max(backbones.get(model.backbone_sha256, 0),
                                                   model.estimate_bytes)
        else:
            total += model.estimate_bytes
    return total + sum(backbones.values())


def head_file_bytes(model_dir: str, manifest: Manifest) -> int:
    """The size of the head-only file, 0 when the artifact has none (loads whole)."""
    if not (manifest.backbone_sha256 and manifest.head_file):
        return 0
    path = Path(model_dir) / manifest.head_file
    return path.stat().st_size if path.is_file() else 0


def verify_artifact(model_dir: str) -> tuple[Manifest, int]:
    """The manifest (readable, valid, classes) and weights (present, sha256 as the manifest
    says) of an unpacked artifact, and the size of the files a worker loads; ArtifactError
    naming the file otherwise. What the workers load later is checked again by them."""
    manifest = Manifest.read(model_dir)
    weights = verified_file(Path(model_dir) / manifest.weights_file, manifest.weights_sha256,
                            "weights file")
    size = weights.stat().st_size
    for variant in manifest.variants.values():  # the workers may run a variant instead
        path = Path(model_dir) / variant.file
        size = max(size, path.stat().st_size if path.is_file() else 0)
    return manifest, size


def _meminfo(field: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory_limit_bytes() -> int | None:
    """The container's cgroup v2 memory limit, else the machine's memory; None if unknown."""
    try:
        limit = (_CGROUP / "memory.max").read_text().strip()
        if limit != "max":
            return int(limit)
    except (OSError, ValueError):
        pass
    return _meminfo("MemTotal")


def _cgroup_available() -> int | None:
    """cgroup v2 limit minus usage (a container's memory limit), None when unlimited."""
    try:
        limit = (_CGROUP / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((_CGROUP / "memory.current").read_text().strip())
    except (OSError, ValueError):
        return None


def available_memory_bytes() -> int | None:
    """The smaller of the machine's and the container's free memory; None when unknown (a
    worker's check before it loads: resident_models)."""
    known = [m for m in (_meminfo("MemAvailable"), _cgroup_available()) if m is not None]
    return min(known) if known else None


def models_budget_bytes(configured: int) -> int | None:
    """Bytes all loaded models may take: SERVE_MODELS_MEMORY_BYTES, else the memory limit less
    RESERVED_BYTES; None when unknown (then only MemAvailable is checked)."""
    if configured:
        return configured
    limit = memory_limit_bytes()
    return None if limit is None else max(0, limit - RESERVED_BYTES)


def memory_refusal(name: str, need: int, committed: int, configured: int) -> str | None:
    """Why a model needing ``need`` bytes does not fit beside ``committed`` bytes of loaded
    models (the budget, or the memory free now), or None if it fits."""
    budget = models_budget_bytes(configured)
    if budget is not None and committed + need > budget:
        return (f"model {name!r} needs about {need >> 20} MiB; the loaded models take "
                f"{committed >> 20} MiB of {budget >> 20} MiB for models")
    available = _meminfo("MemAvailable")
    if available is not None and need > available:
        return f"model {name!r} needs about {need >> 20} MiB; {available >> 20} MiB are free"
    return None
