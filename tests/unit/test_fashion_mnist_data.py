"""The Fashion-MNIST bench's data set-up, on tiny synthetic IDX files written here (never the
real data): the IDX reader and the held-out-class split (bench/fashion_mnist.py)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.fashion_mnist import CLASSES, FILES, Layout, SetupError, prepare, read_idx


def write_idx(path: Path, array: np.ndarray) -> None:
    """The IDX format: two zero bytes, type 0x08 (uint8), the number of dimensions, each
    dimension as a big-endian uint32, then the data in C order."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as stream:
        stream.write(header + array.astype(np.uint8).tobytes())


def synthetic(folder: Path, per_class: int) -> None:
    """Train and test IDX files: ``per_class`` 28x28 images of each label, every pixel of an
    image equal to its index in the file (mod 256) so a written PNG says where it came from."""
    folder.mkdir(parents=True, exist_ok=True)
    for images_name, labels_name in FILES.values():
        labels = np.repeat(np.arange(len(CLASSES)), per_class)
        images = (np.arange(len(labels)) % 256)[:, None, None] * np.ones((1, 28, 28))
        write_idx(folder / images_name, images)
        write_idx(folder / labels_name, labels)


def test_read_idx_gives_shape_type_and_values(tmp_path: Path) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a-idx3-ubyte.gz", array)
    write_idx(tmp_path / "a-idx3-ubyte", array)
    for name in ("a-idx3-ubyte.gz", "a-idx3-ubyte"):
        read = read_idx(tmp_path / name)
        assert read.shape == (2, 3, 4) and read.dtype == np.uint8
        assert np.array_equal(read, array)


def test_read_idx_refuses_a_file_that_is_not_idx(tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(16))
    with pytest.raises(SetupError, match="not an IDX file"):
        read_idx(tmp_path / "x")
    write_idx(tmp_path / "short", np.zeros((4, 2), dtype=np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(SetupError, match="7 bytes of data for shape"):
        read_idx(tmp_path / "short")


def _counts(folder: Path) -> dict[str, int]:
    return {p.name: len(list(p.glob("*.png"))) for p in sorted(folder.iterdir()) if p.is_dir()}


def test_held_out_classes_are_only_in_unknown(tmp_path: Path) -> None:
    synthetic(tmp_path / "idx", per_class=6)
    layout = Layout(held_out=("shirt", "bag"), train_per_class=3, valid_per_class=2,
                    test_per_class=4)
    folders = prepare(tmp_path / "out", layout, source=tmp_path / "idx")
    data, unknown = folders["data"], folders["unknown"]
    known = [c for c in CLASSES if c not in ("shirt", "bag")]
    assert _counts(data / "train") == dict.fromkeys(sorted(known), 3)
    assert _counts(data / "valid") == dict.fromkeys(sorted(known), 2)
    assert _counts(folders["test"]) == dict.fromkeys(sorted(known), 4)
    assert sorted(p.name for p in data.iterdir()) == ["train", "valid"]  # the job's splits
    assert _counts(unknown) == {"bag": 4, "shirt": 4}
    # train and valid are drawn from the training file without overlap
    for name in known:
        train = {p.name for p in (data / "train" / name).iterdir()}
        assert not train & {p.name for p in (data / "valid" / name).iterdir()}
    # a written image is the IDX image it names: class "bag" (label 8) of the test file
    first = sorted((unknown / "bag").iterdir())[0]
    index = int(first.stem)
    assert 8 * 6 <= index < 9 * 6
    assert np.asarray(Image.open(first)).tolist() == [[index % 256] * 28] * 28


def test_a_layout_asking_for_more_images_than_a_class_has_fails(tmp_path: Path) -> None:
    synthetic(tmp_path / "idx", per_class=4)
    with pytest.raises(SetupError, match="has 4 images, 5 asked"):
        prepare(tmp_path / "out", Layout(("bag",), 3, 2, 1), source=tmp_path / "idx")
    with pytest.raises(SetupError, match="held-out classes must be distinct"):
        prepare(tmp_path / "out", Layout(("Bag",), 1, 1, 1), source=tmp_path / "idx")
