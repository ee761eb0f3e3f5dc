"""container_serve.resident_models: the models one worker holds in multi-model mode."""

from __future__ import annotations

import gc
import io
import json
import shutil
import weakref
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
EAGER = ServeSettings(graph="eager")  # where the answer is not compared: no tracing, faster


def write_model(folder: Path, classes: tuple[str, ...], seed: int, tuned: bool = False) -> Path:
    """A real ResNet50 artifact (random weights) written by the project's writer. The same
    seed gives the same backbone whatever the classes (the head is initialised last), as a
    frozen-backbone run does; ``tuned`` changes layer4 as fine-tuning would."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = build_model("resnet50", len(classes)).eval()
    if tuned:
        with torch.no_grad():
            model.layer4[2].conv3.weight.mul_(1.01)
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


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two frozen-backbone models on one backbone, a fine-tuned one, and one whose manifest
    predates fingerprints."""
    root = tmp_path_factory.mktemp("family")
    old = write_model(root / "old", ("p", "q"), 7)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["backbone_sha256"], manifest["head_sha256"], manifest["head_file"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    return {"a": write_model(root / "a", ("a", "b", "c"), 7),
            "b": write_model(root / "b", ("x", "y", "z", "w"), 7),
            "tuned": write_model(root / "tuned", ("a", "b", "c"), 7, tuned=True),
            "old": old}


def single(folder: Path, monkeypatch: pytest.MonkeyPatch) -> torch.Tensor:
    monkeypatch.setenv("SERVE_GRAPH", "frozen")
    return probabilities(inference.model_fn(str(folder)))


def test_head_sharing_models_answer_as_single_model_serving(family, monkeypatch):
    resident = ResidentModels(SETTINGS)
    resident.load("a", str(family["a"]))
    monkeypatch.setattr(resident_models, "load_artifact", None)  # b must not load whole
    (family["b"] / "model.pt").rename(family["b"] / "moved.pt")  # nor read its model.pt
    b = resident.load("b", str(family["b"]))
    assert b.graph == "frozen-shared"
    assert b.model.backbone is resident.get("a").model.backbone
    assert list(resident.backbone_users().values()) == [2]
    monkeypatch.undo()
    (family["b"] / "moved.pt").rename(family["b"] / "model.pt")
    for name in ("a", "b"):
        assert (probabilities(resident.get(name)) - single(family[name], monkeypatch)
                ).abs().max() <= 1e-5


def test_fine_tuned_and_unfingerprinted_models_load_whole(family, monkeypatch):
    resident = ResidentModels(SETTINGS)
    a = resident.load("a", str(family["a"]))
    tuned = resident.load("tuned", str(family["tuned"]))
    old = resident.load("old", str(family["old"]))
    assert tuned.model.backbone is not a.model.backbone  # fingerprints differ: no sharing
    assert sorted(resident.backbone_users().values()) == [1, 1]
    assert old.graph == "frozen" and not isinstance(old.model, resident_models.SharedHead)
    for name in ("tuned", "old"):
        assert (probabilities(resident.get(name)) - single(family[name], monkeypatch)
                ).abs().max() <= 1e-5


def test_the_backbone_goes_with_its_last_user(family):
    resident = ResidentModels(EAGER)
    backbone = weakref.ref(resident.load("a", str(family["a"])).model.backbone)
    resident.load("b", str(family["b"]))
    resident.unload("a")
    assert list(resident.backbone_users().values()) == [1]
    resident.unload("b")
    assert resident.backbone_users() == {}
    gc.collect()
    assert backbone() is None


def test_a_head_that_is_not_the_manifests_is_refused(family, tmp_path):
    resident = ResidentModels(EAGER)
    resident.load("a", str(family["a"]))
    copy = shutil.copytree(family["b"], tmp_path / "b")
    manifest = json.loads((family["b"] / "manifest.json").read_text())
    manifest["head_sha256"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="head_sha256"):
        resident.load("b", str(copy))
    assert resident.names() == ["a"]


def test_a_misnamed_backbone_is_registered_under_its_real_fingerprint(family, tmp_path):
    copy = shutil.copytree(family["a"], tmp_path / "a")
    manifest = json.loads((family["a"] / "manifest.json").read_text())
    real, manifest["backbone_sha256"] = manifest["backbone_sha256"], "1" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    resident = ResidentModels(EAGER)
    resident.load("liar", str(copy))
    assert list(resident.backbone_users()) == [real]


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


def test_a_shared_head_whose_self_test_disagrees_is_refused_the_others_stay(tmp_path):
    """The self-test (model_artifact.self_test) runs on the shared backbone + head as served: a
    head that does not answer as its training job did is refused, and only that model."""
    from model_artifact.self_test import SelfTestError, write_self_test_file

    classes = ("a", "b", "c")
    one = write_model(tmp_path / "one", classes, 3)
    two = write_model(tmp_path / "two", ("x", "y", "z"), 3)  # same backbone: head-only load
    torch.manual_seed(3)
    trained = build_model("resnet50", len(classes)).eval()  # what write_model wrote
    wrong = build_model("resnet50", len(classes)).eval()
    wrong.load_state_dict(trained.state_dict())
    with torch.no_grad():  # classes in reverse order: every answer moves
        wrong.fc.weight.copy_(trained.fc.weight.flip(0))
        wrong.fc.bias.copy_(trained.fc.bias.flip(0))
    inputs = torch.randn(16, 3, 32, 32)
    write_self_test_file(one, trained, Manifest.read(one), inputs)  # positive control
    write_self_test_file(two, wrong, Manifest.read(two), inputs)
    resident = ResidentModels(EAGER)
    resident.load("one", str(one))
    with pytest.raises(SelfTestError, match="self-test failed"):
        resident.load("two", str(two))
    assert resident.names() == ["one"]
