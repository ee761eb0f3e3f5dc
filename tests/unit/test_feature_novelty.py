"""abstain-score=features: class Gaussians on the pooled features (docs/artifact.md "novelty"):
the score, novelty.pt (written, hashed, refused when altered), and every served graph giving
the features, so that the served score is the fp32 network's, within a tolerance per graph."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from container_serve import inference
from container_serve.resident_models import ResidentModels
from container_serve.settings import ServeSettings
from container_train import trust
from model_artifact import compiled
from model_artifact.manifest import COMPILED, ArtifactError, Manifest, Novelty
from model_artifact.network import WithFeatures, build_model
from model_artifact.novelty import (
    feature_scores,
    fit_class_gaussian,
    fit_feature_novelty,
    load_feature_gaussian,
    mahalanobis_score,
)
from model_artifact.preprocess import EvalPreprocessing
from model_artifact.writer import write_artifact, write_feature_novelty

CLASSES = ("red", "green", "blue")
PRE = EvalPreprocessing.for_image_size(32)
TINTS = ((200, 40, 40), (40, 200, 40), (40, 40, 200))
AVX2 = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def _png(label: int, seed: int) -> bytes:
    """A noisy 40x40 image tinted by its class, its brightness and tint varying per image
    (pooled features average the noise out: the spread within a class is the tint's)."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randint(-40, 40, (40, 40, 3), generator=generator)
    tint = torch.tensor(TINTS[label]) * (0.5 + torch.rand(1, generator=generator))
    tint = tint + torch.randint(-50, 50, (3,), generator=generator)
    pixels = (tint + noise).clamp(0, 255).to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _split(root: Path, name: str, per_class: int, seed: int) -> list[tuple[Path, int]]:
    samples = []
    for label in range(len(CLASSES)):
        for i in range(per_class):
            path = root / name / f"{label}-{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_png(label, seed + 100 * label + i))
            samples.append((path, label))
    return samples


def _reference(net: nn.Module, train: list[tuple[Path, int]], body: bytes) -> float:
    """The contract's score, from scratch: the smallest Mahalanobis distance of the fp32
    network's pooled features of ``body`` to a class mean fitted on the train features."""
    features = trust.pooled_features(net, [p for p, _ in train], PRE, torch.device("cpu"))
    means, precision = fit_class_gaussian(features, torch.tensor([y for _, y in train]), 3)
    tensor = PRE.transform()(inference.decode(inference.open_image(body)))
    with torch.inference_mode():
        _, pooled = WithFeatures(net.eval())(tensor.unsqueeze(0))
    return float(mahalanobis_score(pooled, means, precision)[0])


def _write(folder: Path, net: nn.Module, train, valid) -> Manifest:
    """The training job's steps for abstain-score=features: fit, novelty.pt, manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    fitted = trust.fit_feature_trust(net, train, valid, pre=PRE, device=torch.device("cpu"),
                                     rate=0.25, temperature=1.0, seed=0)
    novelty = write_feature_novelty(folder, *fitted)
    return write_artifact(folder, net, Manifest("resnet50", CLASSES, PRE, novelty=novelty))


@pytest.fixture(scope="module")
def resnet(tmp_path_factory: pytest.TempPathFactory):
    """A real ResNet50 (random weights, 32 px) features artifact and its training images."""
    root = tmp_path_factory.mktemp("features")
    train, valid = _split(root, "train", 6, 0), _split(root, "valid", 3, 1000)
    torch.manual_seed(0)
    net = build_model("resnet50", len(CLASSES)).eval()
    _write(root / "model", net, train, valid)
    return root / "model", net, train


def _score(served: inference.ServedModel, body: bytes) -> dict:
    prediction = inference.predict_fn([body], served)
    return json.loads(inference.output_fn(prediction, None, 3))["predictions"][0]


def test_a_known_class_feature_scores_below_an_outlier() -> None:
    generator = torch.Generator().manual_seed(0)
    centres = 4 * torch.randn(3, 32, generator=generator)
    labels = torch.arange(300) % 3
    train = centres[labels] + torch.randn(300, 32, generator=generator)
    valid = centres[labels[:90]] + torch.randn(90, 32, generator=generator)
    novelty, gaussian = fit_feature_novelty(train, labels, valid, num_classes=3, rate=0.05)
    known = feature_scores(centres[1:2] + 0.5 * torch.randn(1, 32, generator=generator),
                           gaussian)
    outlier = feature_scores(-centres[1:2] + 6 * torch.randn(1, 32, generator=generator),
                             gaussian)
    assert float(known[0]) < novelty.threshold < float(outlier[0])
    means, precision = fit_class_gaussian(train, labels, 3)  # whitening = the precision's form
    torch.testing.assert_close(feature_scores(valid, gaussian),
                               mahalanobis_score(valid, means, precision), rtol=1e-4, atol=1e-3)
    assert novelty.method == "features" and novelty.fit_images == 300
    assert gaussian.whitening.dtype == torch.float32 and gaussian.means.shape == (3, 32)


def test_the_manifest_names_and_hashes_the_novelty_file(resnet) -> None:
    folder, _, _ = resnet
    data = json.loads((folder / "manifest.json").read_text())["novelty"]
    assert data["method"] == "features" and data["file"] == "novelty.pt"
    assert data["sha256"] == hashlib.sha256((folder / "novelty.pt").read_bytes()).hexdigest()
    assert data["fit_images"] == 18 and data["valid_images"] == 9
    for field in ("file", "sha256"):
        with pytest.raises(ArtifactError, match=field):
            Novelty.from_dict({k: v for k, v in data.items() if k != field}, "novelty", 3)
    assert "file" not in Novelty("energy", 0.0, 0.05, 0.05).to_dict()  # others unchanged


@pytest.mark.parametrize("graph", ["frozen", "eager"])
def test_the_served_score_is_the_fp32_networks(resnet, graph: str) -> None:
    folder, net, train = resnet
    served = inference.load_served(str(folder), ServeSettings(graph=graph))
    assert served.graph == graph
    body = _png(2, 777)
    answer = _score(served, body)
    assert answer["novelty_score"] == pytest.approx(_reference(net, train, body), rel=1e-3)
    assert answer["abstain"] is (answer["novelty_score"] > answer["novelty_threshold"])


def test_the_shared_backbone_serves_the_features_score(resnet) -> None:
    folder, net, train = resnet
    served = ResidentModels(ServeSettings(graph="frozen")).load("m", str(folder))
    assert served.graph == "frozen-shared"
    body = _png(0, 778)
    assert _score(served, body)["novelty_score"] == pytest.approx(
        _reference(net, train, body), rel=1e-3)


def test_a_tampered_novelty_file_is_refused(resnet, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(resnet[0], folder)
    torch.save({"whitening": torch.eye(2048), "means": torch.zeros(3, 2048)},
               folder / "novelty.pt")  # well formed, but not the file the manifest hashed
    with pytest.raises(ArtifactError, match="novelty.pt: sha256 does not match"):
        inference.load_served(str(folder), ServeSettings(graph="frozen"))
    with pytest.raises(ArtifactError, match="novelty.pt: sha256 does not match"):
        load_feature_gaussian(folder, Manifest.read(folder))
    with pytest.raises(ArtifactError, match="novelty.pt: sha256 does not match"):
        ResidentModels(ServeSettings(graph="frozen")).load("m", str(folder))


def _old_package(folder: Path, net: nn.Module, manifest: Manifest,
                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A compiled variant in the format written before the features score (stand-in package:
    the fp32 network answering the logits alone, as such packages do)."""
    (folder / compiled.COMPILED_FILE).write_bytes(b"old package")
    variant = compiled.Variant(file=compiled.COMPILED_FILE, format=compiled.COMPILED_FORMAT,
                               sha256=hashlib.sha256(b"old package").hexdigest(),
                               torch=torch.__version__, threads=1)
    manifest.with_variant(COMPILED, variant).write(folder)
    monkeypatch.setattr(compiled, "_load_package", lambda path: net)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")


def test_an_old_compiled_package_serves_energy_and_falls_back_for_features(
        resnet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    folder, net, train = resnet
    energy, features = tmp_path / "energy", tmp_path / "features"
    shutil.copytree(folder, features)
    shutil.copytree(folder, energy)
    manifest = Manifest.read(folder)
    _old_package(energy, net, manifest.with_trust(
        None, Novelty("energy", -1.0, 0.05, 0.05, 9)), monkeypatch)
    _old_package(features, net, manifest, monkeypatch)
    old = inference.load_served(str(energy), ServeSettings())
    assert old.graph == "compiled" and "novelty_score" in _score(old, _png(1, 5))
    with caplog.at_level(logging.WARNING, logger="container_serve.inference"):
        served = inference.load_served(str(features), ServeSettings())
    assert served.graph == "frozen"
    (line,) = [r.getMessage() for r in caplog.records if "pooled features" in r.getMessage()]
    assert "compiled graph gives no pooled features" in line
    body = _png(1, 6)
    assert _score(served, body)["novelty_score"] == pytest.approx(
        _reference(net, train, body), rel=1e-3)


class SmallNet(nn.Module):
    """Conv-BN-ReLU, pool, then ``fc`` on the flat pooled vector: ResNet's shape, compiled and
    quantized in seconds rather than minutes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, len(CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(torch.relu(self.bn(self.conv(x)))), 1))


@pytest.fixture(scope="module")
def small(resnet, tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(1)
    net = SmallNet().eval()
    with torch.no_grad():
        net.bn.running_var.fill_(0.5)
    folder = tmp_path_factory.mktemp("small") / "model"
    manifest = _write(folder, net, resnet[2], resnet[2][::2])
    return folder, net, resnet[2], manifest


@pytest.mark.skipif(not AVX2, reason="the package targets x86-64-v3 (AVX2)")
def test_the_compiled_package_gives_the_features(small) -> None:
    folder, net, train, manifest = small
    written = compiled.write_compiled_variant(folder, net, manifest, [p for p, _ in train[:4]])
    assert written.variants[COMPILED].format == "aotinductor-x86-64-v3-batch1+features"
    assert written.variants[COMPILED].top1_agreement == 1.0  # logits compared, as before
    served = inference.load_served(str(folder), ServeSettings(graph="compiled", precision="fp32"))
    assert served.graph == "compiled"
    for body in (_png(0, 11), _png(2, 12)):
        assert _score(served, body)["novelty_score"] == pytest.approx(
            _reference(net, train, body), rel=1e-3)


@pytest.mark.skipif(not AVX2, reason="the package targets x86-64-v3 (AVX2)")
def test_the_int8_package_gives_the_features(small) -> None:
    pytest.importorskip("torchao", reason="quantizing needs torchao (dev/requirements-host.txt)")
    from model_artifact.quantize import INT8_FILE, write_int8_variant

    folder, net, train, _ = small
    written = write_int8_variant(folder, net, Manifest.read(folder), [p for p, _ in train])
    assert written.variants["int8"].format == "aotinductor-pt2e-x86-int8-batch1+features"
    assert (folder / INT8_FILE).is_file()
    served = inference.load_served(str(folder), ServeSettings(precision="int8"))
    assert served.graph == "int8"
    # int8 rounds the features too, and whitening magnifies that along the directions the
    # classes barely vary in (here 16 features fitted on 18 images): most scores stay within a
    # few per cent of fp32's, a few move more. The median is held to 5%.
    bodies = [_png(i % 3, 30 + i) for i in range(6)]
    errors = [abs(_score(served, b)["novelty_score"] / _reference(net, train, b) - 1)
              for b in bodies]
    assert sorted(errors)[len(errors) // 2] < 0.05, errors


def test_the_device_graph_gives_the_features(resnet, monkeypatch: pytest.MonkeyPatch) -> None:
    """OnDevice (serving on cuda) hands both outputs back as float32 CPU tensors: stood in here
    by the same ResNet in CPU half precision, the fp16 that cuda serves."""
    folder, net, train = resnet
    half = build_model("resnet50", len(CLASSES)).eval()
    half.load_state_dict(net.state_dict())
    on_device = inference.OnDevice(WithFeatures(half).half(), torch.device("cpu"),
                                   torch.float16)
    manifest = Manifest.read(folder)
    monkeypatch.setattr(inference, "_cuda_model",
                        lambda model_dir, m, s: (on_device, manifest, "cuda-fp16"))
    served = inference.load_served(str(folder), ServeSettings(device="cuda"))
    body = _png(1, 779)
    assert _score(served, body)["novelty_score"] == pytest.approx(
        _reference(net, train, body), rel=0.05)


def test_the_train_sample_is_capped_per_class_and_in_all() -> None:
    samples = [(f"{label}-{i}.png", label) for label in range(3) for i in range(50)]
    chosen = trust.capped_sample(samples, seed=0, per_class=20, total=50)
    counts = [sum(1 for _, y in chosen if y == label) for label in range(3)]
    assert len(chosen) == 50 and max(counts) <= 20 and set(chosen) <= set(samples)
    per_class = trust.capped_sample(samples, seed=0, per_class=10, total=100)
    assert sorted(y for _, y in per_class) == [0] * 10 + [1] * 10 + [2] * 10
    assert chosen == trust.capped_sample(samples, seed=0, per_class=20, total=50)  # seeded
    assert len(trust.capped_sample(samples, seed=0)) == 150  # defaults: every image here
