"""The freezing policy: which parameters train for each trainable-layers value."""

import pytest
import torch

from container_train.errors import TrainingError
from container_train.model import (
    apply_freezing,
    create_model,
    initial_weights_path,
    set_train_mode,
)


@pytest.fixture(scope="module")
def model():
    return create_model(7, None)


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_head_is_sized_from_the_classes(model):
    assert model.fc.out_features == 7 and model.fc.in_features == 2048


@pytest.mark.parametrize("stages", [0, 1, 2, 3, 4, 5])
def test_trainable_parameter_counts(model, stages):
    apply_freezing(model, stages)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    expected = _count(model.fc) + sum(
        _count(getattr(model, name)) for name in ("layer4", "layer3", "layer2", "layer1")[:stages])
    if stages == 5:
        expected += _count(model.conv1) + _count(model.bn1)
    assert trainable == expected
    assert (trainable == sum(p.numel() for p in model.parameters())) == (stages == 5)


def test_frozen_head_only_counts(model):
    apply_freezing(model, 0)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2048 * 7 + 7


def test_frozen_batchnorm_stays_in_eval_mode(model):
    apply_freezing(model, 1)
    set_train_mode(model, 1)
    assert model.layer4.training and model.fc.training
    assert not model.layer3.training and not model.bn1.training
    before = model.layer3[0].bn1.running_mean.clone()
    model(torch.randn(2, 3, 64, 64))
    assert torch.equal(model.layer3[0].bn1.running_mean, before)


def test_imagenet_weights_absent_fail_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(TrainingError, match="weights=imagenet but torchvision's ResNet50"):
        initial_weights_path("imagenet", None)


def test_pretrained_channel_file_loads_backbone(tmp_path):
    source = create_model(1000, None)
    torch.save(source.state_dict(), tmp_path / "backbone.pth")
    path = initial_weights_path("backbone.pth", tmp_path)
    model = create_model(3, path)
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert model.fc.out_features == 3


def test_missing_pretrained_file_lists_channel(tmp_path):
    (tmp_path / "other.pth").write_bytes(b"")
    with pytest.raises(TrainingError, match=r"not in the pretrained channel .* \['other.pth'\]"):
        initial_weights_path("backbone.pth", tmp_path)
