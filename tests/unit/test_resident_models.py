"""container_serve.resident_models: the models one worker holds in multi-model mode."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from container_serve import inference, resident_models
from container_serve.errors import InsufficientMemory
from container_serve.resident_models import ResidentModels
from container_serve.settings import ServeSettings
from model_artifact.manifest import ArtifactError, Manifest
from model_artifact.network import build_model
from model_artifact.preprocess import EvalPreprocessing
from model_artifact.writer import write_artifact

SETTINGS = ServeSettings(graph="frozen")


def write_model(folder: Path, classes: tuple[str, ...], seed: int) -> Path:
    """A real ResNet50 artifact (random weights) written by the project's writer."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = build_model("resnet50", len(classes)).eval()
    manifest = Manifest(architecture="resnet50", class_names=classes,
                        preprocessing=EvalPreprocessing.for_image_size(32))
    write_artifact(folder, model, manifest)
    return folder


def jpeg(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), colour).save(buffer, "JPEG")
    return buffer.getvalue()


IMAGES = [jpeg((200, 30, 30)), jpeg((30, 30, 200))]


def probabilities(served: inference.ServedModel) -> torch.Tensor:
    return inference.predict_fn(IMAGES, served).probabilities


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    return (write_model(root / "one", ("a", "b", "c"), 1),
            write_model(root / "two", ("x", "y"), 2))


def test_each_model_answers_as_single_model_serving(two_models, monkeypatch):
    resident = ResidentModels(SETTINGS)
    one, two = two_models
    resident.load("one", str(one))
    resident.load("two", str(two))
    assert resident.names() == ["one", "two"]
    monkeypatch.setenv("SERVE_GRAPH", "frozen")
    for name, folder in (("one", one), ("two", two)):
        served = resident.get(name)
        single = inference.model_fn(str(folder))
        assert served.manifest.class_names == single.manifest.class_names
        assert torch.allclose(probabilities(served), probabilities(single), atol=1e-5)


def test_unload_forgets_the_model(two_models):
    resident = ResidentModels(SETTINGS)
    resident.load("one", str(two_models[0]))
    resident.unload("one")
    assert resident.names() == []
    with pytest.raises(KeyError):
        resident.get("one")
    with pytest.raises(KeyError):
        resident.unload("one")


def test_a_model_that_would_not_fit_is_refused_with_507(two_models, monkeypatch):
    monkeypatch.setattr(resident_models, "available_memory_bytes", lambda: 10 << 20)
    resident = ResidentModels(SETTINGS)
    with pytest.raises(InsufficientMemory, match="needs about") as caught:
        resident.load("one", str(two_models[0]))
    assert caught.value.status == 507
    assert resident.names() == []


def test_a_bad_artifact_is_an_artifact_error(tmp_path):
    with pytest.raises(ArtifactError, match="manifest.json"):
        ResidentModels(SETTINGS).load("none", str(tmp_path))
