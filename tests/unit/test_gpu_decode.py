"""gpu-decode (docs/training.md): loader workers read the file bytes, the training device decodes
and augments each batch. The same code runs on a CPU device, which is how these tests check it;
the CUDA run itself is tests/integration/test_gpu.py (bench/gpu_check.sh)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn
from torchvision import transforms

from container_train import checkpoint, data, engine, gpu_decode
from container_train import main as job
from container_train.data import Split, make_loader
from container_train.errors import TrainingError
from job_contract.hyperparameters import Hyperparameters
from model_artifact.preprocess import EvalPreprocessing, load_image

CPU = torch.device("cpu")
CUDA = torch.device("cuda", 0)
PRE = EvalPreprocessing.for_image_size(64)
# Differences from the CPU evaluation preprocessing at image-size 128 / 224, in 8-bit pixel
# levels (0-255), measured on the 138 bundled photos: mean 0.21 / 0.13 over all pixels; per
# image at most 0.20 against Pillow decoding at full size, at most 5.0 against Pillow's draft
# mode, which the CPU path uses for JPEGs at least twice the resize size (a reduced-scale
# decode; at image-size 64 a 1/4-scale one: mean 1.7 levels on 8 photos).
MEAN_LEVELS = 0.5
IMAGE_LEVELS_FULL_DECODE = 0.5


def _photos(sample_data: Path, count: int = 8) -> list[Path]:
    return sorted((sample_data / "train").rglob("*.jpg"))[:count]


def _batch(paths: list[Path], augment: bool, pre: EvalPreprocessing = PRE) -> torch.Tensor:
    """The path a training loader takes: worker items, the collate, then the device step."""
    dataset = gpu_decode.EncodedImageDataset([(p, 0) for p in paths], pre)
    collate = gpu_decode.Collate(gpu_decode.DeviceAugment(pre, augment=augment))
    encoded, _ = collate([dataset[i] for i in range(len(dataset))])
    return encoded.to_device(CPU)


def _levels(a: torch.Tensor, b: torch.Tensor, pre: EvalPreprocessing = PRE) -> torch.Tensor:
    """|a - b| of normalised tensors in 8-bit pixel levels."""
    return (a - b).abs() * torch.tensor(pre.std).view(1, 3, 1, 1) * 255


def _cpu_eval(paths: list[Path], draft: bool = True, pre: EvalPreprocessing = PRE
              ) -> torch.Tensor:
    transform = pre.transform()
    return torch.stack([transform(load_image(p, min_side=pre.min_side if draft else None))
                        for p in paths])


def test_training_batch_is_normalised_channels_last_float_of_the_crop_size(sample_data):
    paths = _photos(sample_data)
    torch.manual_seed(0)
    batch = _batch(paths, augment=True)
    assert batch.shape == (len(paths), 3, PRE.crop_size, PRE.crop_size)
    assert batch.dtype == torch.float32
    assert batch.is_contiguous(memory_format=torch.channels_last)
    # pre.normalize of uint8 pixels: mapped back, every value is a whole level in 0..255
    mean, std = torch.tensor(PRE.mean).view(1, 3, 1, 1), torch.tensor(PRE.std).view(1, 3, 1, 1)
    pixels = (batch * std + mean) * 255
    assert pixels.min() > -1e-3 and pixels.max() < 255 + 1e-3
    assert (pixels - pixels.round()).abs().max() < 1e-3
    # random crops and flips: another draw differs, the same seed repeats it
    assert not torch.equal(batch, _batch(paths, augment=True))
    torch.manual_seed(0)
    assert torch.equal(batch, _batch(paths, augment=True))


def test_without_augmentation_it_matches_the_cpu_evaluation_preprocessing(sample_data):
    pre = EvalPreprocessing.for_image_size(128)  # the bench's size; the tolerance's
    paths = _photos(sample_data)
    batch = _batch(paths, augment=False, pre=pre)
    assert _levels(batch, _cpu_eval(paths, pre=pre), pre).mean() < MEAN_LEVELS
    per_image = _levels(batch, _cpu_eval(paths, draft=False, pre=pre), pre).mean(dim=(1, 2, 3))
    assert per_image.max() < IMAGE_LEVELS_FULL_DECODE, per_image


def _save(image: Image.Image, path: Path, fmt: str, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt, **kwargs)
    return path


def _portrait_rotated(tmp_path: Path) -> Path:
    """A JPEG stored landscape with EXIF orientation 6 (display rotated 90 degrees)."""
    image = Image.new("RGB", (120, 80), (200, 30, 30))
    image.paste((30, 30, 200), (0, 0, 60, 80))  # left half blue, right half red
    exif = Image.Exif()
    exif[gpu_decode.EXIF_ORIENTATION] = 6
    return _save(image, tmp_path / "rotated.jpg", "JPEG", exif=exif.tobytes(), quality=95)


def test_png_cmyk_and_exif_rotated_files_go_through_the_pillow_fallback(tmp_path):
    rgba = Image.new("RGBA", (90, 70), (0, 128, 0, 255))
    rgba.putpixel((3, 3), (0, 0, 0, 0))
    paths = [_save(rgba, tmp_path / "a.png", "PNG"),
             _save(Image.new("CMYK", (80, 80), (10, 200, 30, 0)), tmp_path / "c.jpg", "JPEG"),
             _portrait_rotated(tmp_path)]
    dataset = gpu_decode.EncodedImageDataset([(p, 0) for p in paths], PRE)
    assert all(isinstance(dataset[i][0], torch.Tensor) for i in range(3))  # pixels, not bytes
    batch = _batch(paths, augment=False)
    expected = _cpu_eval(paths)
    assert batch.shape == expected.shape
    # Pillow decodes these on both paths; only the resize differs (measured: 0, 0, 0.005)
    assert _levels(batch, expected).mean(dim=(1, 2, 3)).max() < MEAN_LEVELS
    # the upright rotated image: blue on top, red below (decode_jpeg ignores EXIF on CUDA)
    upright = load_image(paths[2])
    assert upright.size == (80, 120)
    top, bottom = batch[2, :, 5, 32], batch[2, :, 58, 32]
    assert top[2] > top[0] and bottom[0] > bottom[2]


def test_a_plain_jpeg_travels_as_its_bytes(sample_data):
    path = _photos(sample_data, 1)[0]
    payload, label, name = gpu_decode.EncodedImageDataset([(path, 3)], PRE)[0]
    assert payload == path.read_bytes()
    assert (label, name) == (3, str(path))


def test_a_corrupt_or_vanished_image_stops_the_job_with_a_readable_error(sample_data, tmp_path):
    good = _photos(sample_data, 2)
    whole = good[0].read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(whole[: len(whole) // 3])
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(whole[:600] + bytes(range(256)) * 40)
    for bad in (truncated, garbage, tmp_path / "gone.jpg"):
        with pytest.raises(TrainingError) as caught:
            _batch([good[1], bad], augment=True)
        message = str(caught.value)
        assert message.startswith(f"training image {bad} cannot be"), message
        assert "\n" not in message


def test_the_training_loop_takes_byte_batches_from_the_loader(sample_data):
    """make_loader with decode_on_device feeds train_one_epoch; evaluation loaders stay uint8."""
    samples = [(p, i % 2) for i, p in enumerate(_photos(sample_data, 6))]
    split = Split("train", samples, [])
    loader = make_loader(split, PRE, train=True, batch_size=4, num_workers=0, seed=1,
                         decode_on_device=True)
    images, labels = next(iter(loader))
    assert isinstance(images, gpu_decode.EncodedBatch) and len(labels) == 4
    evaluation = make_loader(split, PRE, train=False, batch_size=4, num_workers=0, seed=1,
                             decode_on_device=True)
    assert next(iter(evaluation))[0].dtype == torch.uint8
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2))
    stats = engine.train_one_epoch(
        model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1), loader, CPU,
        epoch=1, epochs=1, log_interval=10, callbacks=[])
    assert stats is not None and stats.images == len(samples)


def test_the_switch_resolves_per_device():
    assert gpu_decode.resolve_gpu_decode("auto", CUDA) is True
    assert gpu_decode.resolve_gpu_decode("auto", CPU) is False
    assert gpu_decode.resolve_gpu_decode("true", CUDA) is True
    assert gpu_decode.resolve_gpu_decode("false", CUDA) is False
    assert gpu_decode.resolve_gpu_decode("false", CPU) is False
    with pytest.raises(TrainingError, match="gpu-decode=true needs a CUDA GPU and this job "
                                            "runs on cpu: use gpu-decode=auto or false"):
        gpu_decode.resolve_gpu_decode("true", CPU)
    assert Hyperparameters.from_mapping({}).gpu_decode == "auto"
    assert Hyperparameters.from_mapping({"gpu_decode": True}).gpu_decode == "true"


def test_gpu_decode_true_on_a_cpu_job_fails_before_reading_data(sample_data, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setenv("SM_OUTPUT_DIR", str(tmp_path / "output"))
    monkeypatch.setattr(job, "scan_split", lambda *a, **k: pytest.fail("data was read"))
    code = job.main(["--data-dir", str(sample_data), "--model-dir", str(tmp_path / "m"),
                 "--output-data-dir", str(tmp_path / "o"), "--gpu-decode", "true"])
    assert code == 1
    first_line = (tmp_path / "output" / "failure").read_text().splitlines()[0]
    assert first_line == ("gpu-decode=true needs a CUDA GPU and this job runs on cpu: use "
                          "gpu-decode=auto or false")


def test_the_cpu_loader_is_unchanged_when_off(sample_data):
    split = Split("train", [(p, 0) for p in _photos(sample_data, 4)], [])
    loader = make_loader(split, PRE, train=True, batch_size=4, num_workers=0, seed=1)
    assert isinstance(loader.dataset, data.ImageListDataset)
    images, _ = next(iter(loader))
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 64, 64)


def test_a_resumed_epoch_keeps_the_byte_batches(sample_data):
    """A mid-epoch checkpoint's remaining batches (checkpoint.remaining_batches) keep the
    loader's collate: the engine gets byte batches, not a default collate's failure."""
    split = Split("train", [(p, 0) for p in _photos(sample_data, 6)], [])
    loader = make_loader(split, PRE, train=True, batch_size=2, num_workers=0, seed=1,
                         decode_on_device=True)
    rest = checkpoint.remaining_batches(loader, 1, seed=3)
    batches = list(rest)
    assert len(batches) == 2
    assert all(isinstance(images, gpu_decode.EncodedBatch) for images, _ in batches)


def test_batch_crop_boxes_follow_torchvision_random_resized_crop():
    """crop_boxes draws the CPU path's RandomResizedCrop boxes for a whole batch at once."""
    rrc = transforms.RandomResizedCrop(64)
    torch.manual_seed(0)
    boxes = gpu_decode.crop_boxes(torch.tensor([[375, 500]] * 4000))
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 375).all() and (left + w <= 500).all() and (h > 0).all()
    image = torch.zeros(3, 375, 500)
    reference = torch.tensor([rrc.get_params(image, rrc.scale, rrc.ratio)
                              for _ in range(4000)])
    for column in range(4):  # same distribution: means within 3% of the image side
        assert abs(boxes[:, column].float().mean() - reference[:, column].float().mean()) < 12
    area = (h * w).float() / (375 * 500)
    ref_area = (reference[:, 2] * reference[:, 3]).float() / (375 * 500)
    assert abs(area.mean() - ref_area.mean()) < 0.02 and area.min() > 0.07
    # no box fits a 1 x 1000 strip: get_params' centred fallback, exactly
    strip = torch.zeros(3, 1, 1000)
    assert gpu_decode.crop_boxes(torch.tensor([[1, 1000]])).tolist() == [
        list(rrc.get_params(strip, rrc.scale, rrc.ratio))]


def test_a_resumed_epoch_draws_the_crops_of_an_uninterrupted_one(sample_data):
    """The crops come from torch's CPU generator in the training process, which a mid-epoch
    checkpoint saves (checkpoint.rng_states): the rest of a stopped epoch is the same pixels."""
    split = Split("train", [(p, 0) for p in _photos(sample_data, 6)], [])
    loader = make_loader(split, PRE, train=True, batch_size=2, num_workers=0, seed=1,
                         decode_on_device=True)
    torch.manual_seed(7)
    straight = [images.to_device(CPU) for images, _ in loader]
    torch.manual_seed(7)
    batches = iter(loader)
    next(batches)[0].to_device(CPU)  # step 1, then the job stops
    saved = checkpoint.rng_states()
    torch.manual_seed(123)  # a new process
    checkpoint.restore_rng(saved)
    resumed = [images.to_device(CPU)
               for images, _ in checkpoint.remaining_batches(loader, 1, seed=8)]
    assert len(resumed) == 2
    assert all(torch.equal(a, b) for a, b in zip(straight[1:], resumed, strict=True))
