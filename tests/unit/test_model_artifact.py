"""The artifact contract: manifest validation, image decoding, safe weight loading."""

import hashlib
import io
import json
import struct
import zlib

import pytest
import torch
from PIL import Image

from job_contract.deployment import MANIFEST_PIN_ENV
from model_artifact.manifest import ArtifactError, Manifest, manifest_sha256
from model_artifact.network import build_model, file_sha256, load_artifact
from model_artifact.preprocess import (
    EvalPreprocessing,
    ImageDecodeError,
    ImageTooLargeError,
    load_image,
)


def _manifest(**over):
    data = Manifest(architecture="resnet50", class_names=("a", "b"),
                    preprocessing=EvalPreprocessing.for_image_size(32)).to_dict()
    data.update(over)
    return data


@pytest.mark.parametrize(("change", "message"), [
    ({"format_version": 2}, "format_version 2 is not supported"),
    ({"architecture": "vgg16"}, "architecture 'vgg16' is not one of"),
    ({"class_names": []}, "class_names must be a non-empty list"),
    ({"class_names": ["a", "a"]}, "class_names has duplicates"),
    ({"num_classes": 3}, "num_classes is 3 but class_names has 2"),
    ({"preprocessing": {"resize": 10, "crop_size": 20, "mean": [0, 0, 0], "std": [1, 1, 1]}},
     "invalid preprocessing: need 0 < crop_size <= resize"),
    ({"weights_file": "../etc/passwd"}, "weights_file must be a plain file name"),
    ({"class_names": "ab"}, "field 'class_names' must be list"),
])
def test_invalid_manifests_name_the_problem(change, message):
    with pytest.raises(ArtifactError, match="manifest.json: " + message.replace("(", r"\(")):
        Manifest.from_dict(_manifest(**change))


def test_manifest_round_trip(tmp_path):
    manifest = Manifest.from_dict(_manifest())
    manifest.write(tmp_path)
    assert Manifest.read(tmp_path) == manifest
    assert manifest.preprocessing.resize == 37


def _artifact(tmp_path, num_classes=2, sha=True):
    model = build_model("resnet50", num_classes)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    data = _manifest()
    if sha:
        data["weights_sha256"] = file_sha256(tmp_path / "model.pt")
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    return model


def test_load_artifact_restores_the_weights(tmp_path):
    source = _artifact(tmp_path)
    model, manifest = load_artifact(tmp_path)
    assert not model.training and manifest.class_names == ("a", "b")
    assert torch.equal(model.fc.weight, source.fc.weight)


def test_mismatched_weights_are_refused(tmp_path):
    _artifact(tmp_path, num_classes=3, sha=False)
    with pytest.raises(ArtifactError, match=r"model.pt: weights do not match the manifest "
                                            r"\(resnet50, 2 classes\)"):
        load_artifact(tmp_path)


def test_tampered_weights_fail_the_hash(tmp_path):
    _artifact(tmp_path)
    with open(tmp_path / "model.pt", "ab") as f:
        f.write(b"x")
    with pytest.raises(ArtifactError, match="sha256 does not match"):
        load_artifact(tmp_path)


def test_pickled_code_is_not_loaded(tmp_path):
    _artifact(tmp_path, sha=False)
    torch.save({"x": torch.nn.Linear(1, 1)}, tmp_path / "model.pt")  # a module, not tensors
    with pytest.raises(ArtifactError, match="cannot be loaded as a state_dict"):
        load_artifact(tmp_path)


def test_pinned_manifest_hash_refuses_any_other_manifest(tmp_path, monkeypatch):
    """SERVE_MANIFEST_SHA256 (set by the deployer, from outside the archive) pins manifest.json's
    bytes, and with them every hash it lists: a changed manifest is refused by every reader."""
    _artifact(tmp_path)
    pinned = hashlib.sha256((tmp_path / "manifest.json").read_bytes()).hexdigest()
    assert manifest_sha256(tmp_path) == pinned
    monkeypatch.setenv(MANIFEST_PIN_ENV, pinned.upper())
    load_artifact(tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**data, "class_names": ["x", "y"]}))
    with pytest.raises(ArtifactError, match=f"manifest.json: sha256 [0-9a-f]{{64}} is not the "
                                            f"deployed {MANIFEST_PIN_ENV}={pinned}"):
        load_artifact(tmp_path)
    monkeypatch.setenv(MANIFEST_PIN_ENV, "abc")
    with pytest.raises(ArtifactError, match=f"{MANIFEST_PIN_ENV}='abc' is not a sha256"):
        Manifest.read(tmp_path)
    monkeypatch.setenv(MANIFEST_PIN_ENV, "")  # unset or empty: no pin
    assert Manifest.read(tmp_path).class_names == ("x", "y")


def test_load_artifact_uses_the_manifest_it_is_given(tmp_path):
    """A caller that has read (and pin-checked) the manifest passes it: the weights are loaded
    against that manifest, and manifest.json is not opened again."""
    source = _artifact(tmp_path)
    manifest = Manifest.read(tmp_path)
    (tmp_path / "manifest.json").unlink()
    model, used = load_artifact(tmp_path, manifest)
    assert used is manifest and torch.equal(model.fc.weight, source.fc.weight)


def test_serving_reads_the_manifest_once(tmp_path, monkeypatch):
    from container_serve import inference

    _artifact(tmp_path)
    reads = []
    original = Manifest.read.__func__
    monkeypatch.setattr(Manifest, "read", classmethod(
        lambda cls, model_dir: reads.append(model_dir) or original(cls, model_dir)))
    monkeypatch.setenv("SERVE_GRAPH", "eager")
    served = inference.model_fn(str(tmp_path))
    assert served.manifest.class_names == ("a", "b") and len(reads) == 1


def test_missing_manifest(tmp_path):
    with pytest.raises(ArtifactError, match="manifest.json: not found"):
        load_artifact(tmp_path)


def _encode(image, fmt, **kw):
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "LA", "I;16", "1"])
def test_every_mode_becomes_rgb(mode):
    image = Image.new("RGB", (20, 10), (255, 0, 0)).convert(mode)
    fmt = "JPEG" if mode in ("CMYK", "L") else "TIFF" if mode == "I;16" else "PNG"
    out = load_image(_encode(image, fmt))
    assert out.mode == "RGB" and out.size == (20, 10)


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert load_image(_encode(image, "PNG")).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    assert load_image(_encode(image, "JPEG", exif=exif)).size == (20, 40)


def test_jpeg_draft_decodes_large_photos_smaller():
    data = _encode(Image.new("RGB", (1600, 1200), (9, 9, 9)), "JPEG")
    assert load_image(data, min_side=256).size == (400, 300)
    assert load_image(data).size == (1600, 1200)


def _png_header_only(width, height):
    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding():
    with pytest.raises(ImageTooLargeError, match="20000x20000 pixels"):
        load_image(_png_header_only(20000, 20000))


@pytest.mark.parametrize("data", [b"", b"not an image", None])
def test_garbage_and_truncated_data(data):
    if data is None:  # a truncated JPEG
        data = _encode(Image.new("RGB", (64, 64)), "JPEG")[:200]
    with pytest.raises(ImageDecodeError):
        load_image(data)


def test_uint8_pixels_then_batch_normalize_equal_the_serving_transform():
    """Training normalises uint8 batches on the device; serving normalises per image. On a CPU
    both must give the same bits, or training's evaluation and the endpoint drift apart."""
    pre = EvalPreprocessing.for_image_size(64)
    images = [Image.frombytes("RGB", (90, 70), bytes(i * 37 % 256 for i in range(90 * 70 * 3))),
              Image.new("RGB", (64, 120), (250, 3, 128))]
    pixels = torch.stack([pre.pixels()(image) for image in images])
    assert pixels.dtype == torch.uint8 and pixels.shape == (2, 3, 64, 64)
    expected = torch.stack([pre.transform()(image) for image in images])
    assert torch.equal(pre.normalize(pixels), expected)
    channels_last = pixels.contiguous(memory_format=torch.channels_last)
    assert torch.equal(pre.normalize(channels_last), expected)


def _written(folder, classes, seed, tune=False):
    from model_artifact.writer import write_artifact

    folder.mkdir()
    torch.manual_seed(seed)
    model = build_model("resnet50", len(classes))
    if tune:  # fine-tuning moves the backbone; a BatchNorm statistic is enough
        model.layer1[0].bn1.running_mean.add_(0.5)
    manifest = Manifest(architecture="resnet50", class_names=classes,
                        preprocessing=EvalPreprocessing.for_image_size(32))
    return write_artifact(folder, model, manifest)


def test_the_backbone_fingerprint_ignores_the_head_only(tmp_path):
    one = _written(tmp_path / "one", ("a", "b"), 3)
    two = _written(tmp_path / "two", ("x", "y", "z"), 3)
    tuned = _written(tmp_path / "tuned", ("a", "b"), 3, tune=True)
    assert one.backbone_sha256 == two.backbone_sha256 != tuned.backbone_sha256
    assert one.head_sha256 != two.head_sha256
    assert one.head_sha256 == tuned.head_sha256
    assert Manifest.read(tmp_path / "one") == one  # written, and read back
    head = torch.load(tmp_path / "one" / one.head_file, weights_only=True)
    whole = torch.load(tmp_path / "one" / "model.pt", weights_only=True)
    assert sorted(head) == ["fc.bias", "fc.weight"]
    assert all(torch.equal(head[k], whole[k]) for k in head)


def test_fingerprints_are_optional_and_checked():
    assert Manifest.from_dict(_manifest()).backbone_sha256 == ""
    assert "backbone_sha256" not in Manifest.from_dict(_manifest()).to_dict()
    with pytest.raises(ArtifactError, match="backbone_sha256 must be 64 lowercase hex"):
        Manifest.from_dict(_manifest(backbone_sha256="abc"))
    with pytest.raises(ArtifactError, match="head_file must be a plain file name"):
        Manifest.from_dict(_manifest(head_file="model.pt"))
