"""Training on a CUDA GPU (AMP) leaves an artifact that the CPU serving path trusts.

Skipped without a GPU, so CI (CPU only) never runs these; `bench/gpu_check.sh` runs them on a
GPU machine together with the AMP throughput bench.
"""

from __future__ import annotations

import json

import pytest
import torch

from container_train.gpu_decode import Collate, DeviceAugment, EncodedImageDataset
from model_artifact.network import load_artifact
from model_artifact.preprocess import EvalPreprocessing, load_image
from tests.conftest import run_training_subprocess

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("layers", ["0", "all"])
def test_amp_training_on_gpu_gives_an_artifact_that_predicts_on_cpu(color_data, tmp_path,
                                                                    layers):
    run = run_training_subprocess(tmp_path, color_data, "--epochs", "4",
                                  "--trainable-layers", layers, "--num-workers", "2")
    assert run.returncode == 0, run.log[-3000:]
    assert "device cuda" in run.log
    assert "precision bf16 autocast" in run.log or "precision fp16 autocast" in run.log
    # gpu-decode=auto: on for image batches, not for the frozen backbone's feature cache
    assert ("training images decoded and augmented on cuda" in run.log) == (layers == "all")

    model, manifest = load_artifact(run.model_dir)  # map_location=cpu, weights_only
    assert next(model.parameters()).device.type == "cpu"
    pre = manifest.preprocessing
    transform = pre.transform()
    correct = total = 0
    for index, name in enumerate(manifest.class_names):
        for path in sorted((color_data / "test" / name).glob("*.jpg")):
            image = transform(load_image(path.read_bytes(), min_side=pre.min_side))
            with torch.no_grad():
                correct += int(model(image.unsqueeze(0)).argmax(1).item() == index)
            total += 1
    cpu_accuracy = correct / total
    final = json.loads((run.output_data_dir / "metrics.json").read_text())["final"]
    gpu_accuracy = final["test_accuracy"]
    # bf16 on the GPU vs fp32 on the CPU may flip a borderline image, not more.
    assert abs(cpu_accuracy - gpu_accuracy) <= 1 / total + 1e-9, (cpu_accuracy, gpu_accuracy)


def _expected(requested: str) -> str | None:
    """What `precision` resolves to on this GPU (None: the job must refuse it)."""
    native_bf16 = torch.cuda.get_device_capability() >= (8, 0)
    if requested == "auto":
        return "bf16" if native_bf16 else "fp16"
    return None if requested == "bf16" and not native_bf16 else requested


@pytest.mark.parametrize("requested", ["auto", "fp32", "fp16", "bf16"])
def test_short_amp_run_per_precision(color_data, tmp_path, requested):
    run = run_training_subprocess(tmp_path, color_data, "--epochs", "2",
                                  "--trainable-layers", "all", "--precision", requested)
    expected = _expected(requested)
    if expected is None:
        assert run.returncode == 1
        assert "precision=bf16 needs a GPU with compute capability 8.0" in run.log
        return
    assert run.returncode == 0, run.log[-3000:]
    manifest = json.loads((run.model_dir / "manifest.json").read_text())
    assert manifest["training"]["precision"] == expected
    assert "compute capability" in manifest["training"]["device"]
    history = json.loads((run.output_data_dir / "metrics.json").read_text())["history"]
    assert all(h["train_loss"] == h["train_loss"] for h in history)  # no NaN from overflow
    print(requested, expected, [round(h["train_loss"], 4) for h in history])


@pytest.mark.parametrize("augment", [False, True])
def test_gpu_decode_on_cuda_matches_the_same_code_on_the_cpu(sample_data, augment):
    """nvjpeg vs libjpeg-turbo and CUDA vs CPU resizing: the same crops (same seed), pixels
    within about a level of 255 on average (printed for bench/README.md)."""
    pre = EvalPreprocessing.for_image_size(224)
    paths = sorted((sample_data / "train").rglob("*.jpg"))[:32]
    dataset = EncodedImageDataset([(p, 0) for p in paths], pre)
    batch, _ = Collate(DeviceAugment(pre, augment))([dataset[i] for i in range(len(dataset))])
    torch.manual_seed(0)
    on_gpu = batch.to_device(torch.device("cuda"))
    torch.manual_seed(0)
    on_cpu = batch.to_device(torch.device("cpu"))
    assert on_gpu.device.type == "cuda" and on_gpu.shape == on_cpu.shape == (32, 3, 224, 224)
    assert on_gpu.is_contiguous(memory_format=torch.channels_last)
    levels = (on_gpu.cpu() - on_cpu).abs() * torch.tensor(pre.std).view(1, 3, 1, 1) * 255
    print(f"gpu-decode cuda vs cpu (augment={augment}): mean {levels.mean():.3f} levels, "
          f"max per image {levels.mean(dim=(1, 2, 3)).max():.3f}")
    assert levels.mean() < 1.0
