"""Multi-model mode, in each MMS worker: the model an invocation names, loaded on its first
use in this worker (container_serve/resident_models.py) from what the serve process recorded
(container_serve/model_registry.py), and dropped once it has been unloaded there.

nginx (container_serve/front.py) turns ``POST /models/<name>/invoke`` into MMS's
``/invocations`` with the name, still percent-encoded as in the URL, in MODEL_HEADER.
"""

from __future__ import annotations

import logging
from urllib.parse import unquote

from container_serve.errors import BadRequest, ModelNotFound
from container_serve.inference import ServedModel
from container_serve.model_registry import MODEL_HEADER, Registry
from container_serve.resident_models import ResidentModels
from container_serve.settings import ServeSettings

logger = logging.getLogger(__name__)
TARGET_MODEL_HEADER = "x-amzn-sagemaker-target-model"  # SageMaker's, for the log only


class WorkerModels:
    """The models this worker holds, kept in step with the registry."""

    def __init__(self, settings: ServeSettings, registry: Registry) -> None:
        self.registry = registry
        self.resident = ResidentModels(settings)
        self.tokens: dict[str, str] = {}  # name -> the registration token it was loaded from
        self.generation = ""

    def _sync(self) -> None:
        """Drop what was unloaded (or unloaded and loaded again) since the last look."""
        generation = self.registry.generation()
        if generation == self.generation:
            return
        for name, token in list(self.tokens.items()):
            registration = self.registry.lookup(name)
            if registration is None or registration.token != token:
                self.resident.unload(name)
                del self.tokens[name]
                logger.info("dropped model %r (unloaded)", name)
        self.generation = generation

    def served(self, headers: dict[str, str]) -> ServedModel:
        quoted = headers.get(MODEL_HEADER)
        if not quoted:
            raise BadRequest("multi-model mode: invoke a model with POST /models/<name>/invoke")
        name = unquote(quoted)
        self._sync()
        if name in self.tokens:
            return self.resident.get(name)
        registration = self.registry.lookup(name)
        if registration is None:
            raise ModelNotFound(f"model {name!r} is not loaded")
        served = self.resident.load(name, registration.url)
        self.tokens[name] = registration.token
        logger.info("model %r loaded in this worker from %s (target model %s)", name,
                    registration.url, headers.get(TARGET_MODEL_HEADER, "not given"))
        return served
