"""The models one MMS worker holds in multi-model mode, by name.

Each load builds the model exactly as single-model serving does (inference.load_served), so a
multi-model answer equals a single-model answer. Before loading, the worker checks that the
model would fit in the memory left (InsufficientMemory, 507: SageMaker then unloads another
model and retries).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from container_serve.errors import InsufficientMemory
from container_serve.inference import ServedModel, load_served
from container_serve.settings import ServeSettings
from model_artifact.manifest import Manifest

logger = logging.getLogger(__name__)

# Loading holds the state_dict, the eager network and the frozen graph at once: about three
# copies of the weights at the peak.
LOAD_PEAK_FACTOR = 3
_CGROUP = Path("/sys/fs/cgroup")


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


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
    """The smaller of the machine's and the container's free memory; None when unknown."""
    known = [m for m in (_meminfo_available(), _cgroup_available()) if m is not None]
    return min(known) if known else None


def check_fits(name: str, need: int) -> None:
    """InsufficientMemory when ``need`` bytes are more than the memory left."""
    free = available_memory_bytes()
    if free is not None and need > free:
        raise InsufficientMemory(f"model {name!r} needs about {need >> 20} MiB to load; "
                                 f"{max(free, 0) >> 20} MiB are free")


class ResidentModels:
    """Name -> ServedModel for one worker process. Thread-safe (MMS may call from threads)."""

    def __init__(self, settings: ServeSettings) -> None:
        self._settings = settings
        self._models: dict[str, ServedModel] = {}
        self._lock = threading.Lock()

    def load(self, name: str, model_dir: str) -> ServedModel:
        """Load ``model_dir`` as ``name``; ArtifactError on a bad artifact, InsufficientMemory
        when it would not fit. Loading a name again replaces the model."""
        manifest = Manifest.read(model_dir)
        weights = Path(model_dir) / manifest.weights_file
        size = weights.stat().st_size if weights.is_file() else 0
        check_fits(name, LOAD_PEAK_FACTOR * size)
        served = load_served(model_dir, self._settings)
        with self._lock:
            self._models[name] = served
        return served

    def get(self, name: str) -> ServedModel:
        with self._lock:
            return self._models[name]

    def unload(self, name: str) -> None:
        with self._lock:
            del self._models[name]

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)
