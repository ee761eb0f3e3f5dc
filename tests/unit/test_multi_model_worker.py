"""Multi-model mode in an MMS worker (container_serve/multi_model.py): the model an invocation
names comes from the registry the serve process writes; loaded once per worker, 404 when not
loaded, dropped once unloaded, loaded afresh when loaded again. The loading itself is
resident_models.py's (its own tests); a stand-in records the loads here."""

from __future__ import annotations

from pathlib import Path

import pytest

from container_serve import multi_model
from container_serve.errors import BadRequest, ModelNotFound
from container_serve.model_registry import MODEL_HEADER, Registration, Registry
from container_serve.settings import ServeSettings


class StandIn:
    """ResidentModels' interface; a model is the url it was loaded from."""

    def __init__(self, settings: ServeSettings) -> None:
        self.models: dict[str, str] = {}
        self.loads: list[str] = []

    def load(self, name: str, model_dir: str) -> str:
        self.loads.append(name)
        self.models[name] = model_dir
        return model_dir

    def get(self, name: str) -> str:
        return self.models[name]

    def unload(self, name: str) -> None:
        del self.models[name]


@pytest.fixture
def setup(tmp_path: Path, monkeypatch) -> tuple[Registry, multi_model.WorkerModels]:
    monkeypatch.setattr(multi_model, "ResidentModels", StandIn)
    registry = Registry(tmp_path)
    registry.clear()
    return registry, multi_model.WorkerModels(ServeSettings(), registry)


def register(registry: Registry, name: str, url: str, token: str) -> None:
    registry.add(Registration(name, url, token, 1))


def test_a_registered_model_loads_once_per_worker(setup):
    registry, worker = setup
    register(registry, "a/b c", "/m/1", "t1")
    header = {MODEL_HEADER: "a%2Fb%20c"}  # as nginx passes it: the URL's encoding
    assert worker.served(header) == "/m/1"
    assert worker.served(header) == "/m/1"
    assert worker.resident.loads == ["a/b c"]


def test_unknown_or_unloaded_models_are_404_and_dropped(setup):
    registry, worker = setup
    register(registry, "m", "/m/1", "t1")
    worker.served({MODEL_HEADER: "m"})
    with pytest.raises(ModelNotFound):
        worker.served({MODEL_HEADER: "other"})
    registry.remove("m")
    with pytest.raises(ModelNotFound) as caught:
        worker.served({MODEL_HEADER: "m"})
    assert caught.value.status == 404 and worker.resident.models == {}


def test_a_model_loaded_again_is_reloaded_from_its_new_url(setup):
    registry, worker = setup
    register(registry, "m", "/m/1", "t1")
    worker.served({MODEL_HEADER: "m"})
    registry.remove("m")
    register(registry, "m", "/m/2", "t2")
    assert worker.served({MODEL_HEADER: "m"}) == "/m/2"
    assert worker.resident.loads == ["m", "m"]


def test_an_invocation_without_a_model_name_is_a_400(setup):
    with pytest.raises(BadRequest, match="/models/<name>/invoke"):
        setup[1].served({})
