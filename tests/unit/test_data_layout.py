"""Finding the splits (both SageMaker layouts), the classes, and unreadable images."""

from pathlib import Path

import pytest
from PIL import Image

from container_train.config import channels_from_env, resolve_splits
from container_train.data import discover_classes, scan_split
from container_train.errors import TrainingError
from model_artifact.preprocess import EvalPreprocessing

PRE = EvalPreprocessing(resize=8, crop_size=8)


def _tree(root: Path, layout: dict[str, dict[str, int]]) -> Path:
    for split, classes in layout.items():
        for name, count in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(folder / f"{i}.jpg")
    return root


def test_one_channel_holding_three_folders(tmp_path):
    root = _tree(tmp_path / "training", {s: {"a": 1} for s in ("train", "valid", "test")})
    splits = resolve_splits(None, {"training": root})
    assert splits == {"train": root / "train", "valid": root / "valid", "test": root / "test"}


def test_three_channels(tmp_path):
    _tree(tmp_path, {s: {"a": 1} for s in ("train", "valid", "test")})
    channels = channels_from_env({f"SM_CHANNEL_{s.upper()}": str(tmp_path / s)
                                  for s in ("train", "valid", "test")} | {"PATH": "/bin"})
    assert resolve_splits(None, channels) == {s: tmp_path / s for s in ("train", "valid", "test")}


def test_channel_named_train_holding_the_folders(tmp_path):
    # What the seed did: the whole data set uploaded under one prefix, given as channel 'train'.
    root = _tree(tmp_path / "train", {s: {"a": 1} for s in ("train", "valid")})
    assert resolve_splits(None, {"train": root}) == {"train": root / "train",
                                                      "valid": root / "valid"}


def test_val_alias_and_pretrained_channel_ignored(tmp_path):
    root = _tree(tmp_path / "data", {"train": {"a": 1}, "val": {"a": 1}})
    splits = resolve_splits(None, {"data": root, "pretrained": tmp_path})
    assert splits["valid"] == root / "val" and "test" not in splits


def test_missing_valid_split_is_named(tmp_path):
    root = _tree(tmp_path, {"train": {"a": 1}})
    with pytest.raises(TrainingError, match="missing 'valid' split"):
        resolve_splits(root, {})


def test_no_data_at_all(tmp_path):
    with pytest.raises(TrainingError, match="no training data"):
        resolve_splits(None, {})


def test_class_mismatch_names_the_classes(tmp_path):
    root = _tree(tmp_path, {"train": {"cat": 1, "dog": 1, "emu": 1},
                            "valid": {"cat": 1, "dog": 1, "fox": 1}})
    with pytest.raises(TrainingError) as info:
        discover_classes({"train": root / "train", "valid": root / "valid"})
    assert "classes in 'valid' differ from 'train': missing ['emu'], extra ['fox']" in str(
        info.value)


def test_empty_class_folder(tmp_path):
    root = _tree(tmp_path, {"train": {"cat": 1, "dog": 0}, "valid": {"cat": 1, "dog": 1}})
    with pytest.raises(TrainingError, match="class folder 'dog' in 'train' has no images"):
        discover_classes({"train": root / "train", "valid": root / "valid"})


def test_classes_sorted_and_non_images_ignored(tmp_path):
    root = _tree(tmp_path, {"train": {"b": 1, "a": 1}, "valid": {"a": 1, "b": 1}})
    (root / "train" / "a" / "notes.txt").write_text("x")
    (root / "train" / ".hidden").mkdir()
    assert discover_classes({"train": root / "train", "valid": root / "valid"}) == ["a", "b"]


def _corrupt(folder: Path, count: int) -> list[Path]:
    paths = []
    for i in range(count):
        good = folder / "0.jpg"
        bad = folder / f"bad{i}.jpg"
        bad.write_bytes(good.read_bytes()[: 40])  # truncated JPEG
        paths.append(bad)
    return paths


def test_corrupt_images_below_share_are_skipped_and_counted(tmp_path):
    root = _tree(tmp_path, {"train": {"a": 10, "b": 10}})
    bad = _corrupt(root / "train" / "a", 1)
    split = scan_split("train", root / "train", ["a", "b"], pre=PRE,
                       max_corrupt_fraction=0.1, workers=2)
    assert len(split.samples) == 20 and split.skipped == bad
    assert {label for _, label in split.samples} == {0, 1}


def test_corrupt_images_above_share_fail_naming_them(tmp_path):
    root = _tree(tmp_path, {"train": {"a": 4}})
    _corrupt(root / "train" / "a", 2)
    with pytest.raises(TrainingError) as info:
        scan_split("train", root / "train", ["a"], pre=PRE, max_corrupt_fraction=0.1,
                   workers=1)
    message = str(info.value)
    assert "2 of 6 images in 'train' are unreadable (33.3% > max-corrupt-fraction 10.0%)" in message
    assert "bad0.jpg" in message and "bad1.jpg" in message


def test_extreme_shapes_are_too_large_not_unreadable(tmp_path):
    """Serving's guard in training: a 1x200000 PNG (a few hundred bytes) would be resized to
    8 x 1,600,000 pixels by evaluation's Resize(8); the limit (40 Mpx) is checked before."""
    root = _tree(tmp_path, {"train": {"a": 3}})
    Image.new("L", (1, 6_000_000)).save(root / "train" / "a" / "thin.png")
    with pytest.raises(TrainingError) as info:
        scan_split("train", root / "train", ["a"], pre=PRE, max_corrupt_fraction=0.05,
                   workers=1)
    message = str(info.value)
    assert message.startswith("1 of 4 images in 'train' are too large (25.0% > ")
    assert ("thin.png (too large: image is 1x6000000 pixels; resizing its short side to 8 "
            "would make 384000000 pixels; the limit is 40000000 pixels)") in message


def test_unreadable_and_too_large_are_told_apart(tmp_path):
    root = _tree(tmp_path, {"train": {"a": 20}})
    _corrupt(root / "train" / "a", 1)
    Image.new("L", (6_000_000, 1)).save(root / "train" / "a" / "wide.png")
    split = scan_split("train", root / "train", ["a"], pre=PRE, max_corrupt_fraction=0.1,
                       workers=1)
    assert len(split.samples) == 20 and len(split.skipped) == 2
    with pytest.raises(TrainingError, match="are unreadable or too large"):
        scan_split("train", root / "train", ["a"], pre=PRE, max_corrupt_fraction=0.05,
                   workers=1)


def test_phone_photo_sizes_are_readable(tmp_path):
    """An 8000x6000 JPEG decodes at 1/8 scale (draft mode): under the pixel limit."""
    root = _tree(tmp_path, {"train": {"a": 1}})
    Image.new("RGB", (8000, 6000), (10, 80, 30)).save(root / "train" / "a" / "phone.jpg",
                                                      quality=50)
    split = scan_split("train", root / "train", ["a"], pre=PRE, max_corrupt_fraction=0.0,
                       workers=1)
    assert len(split.samples) == 2 and not split.skipped


def test_feature_cache_loads_with_the_same_guard(tmp_path):
    from container_train.feature_cache import _ViewImages
    from model_artifact.preprocess import ImageTooLargeError

    Image.new("L", (1, 6_000_000)).save(tmp_path / "thin.png")
    with pytest.raises(ImageTooLargeError, match="resizing its short side to 8"):
        _ViewImages([tmp_path / "thin.png"], PRE, 0, 0, [0])[0]
