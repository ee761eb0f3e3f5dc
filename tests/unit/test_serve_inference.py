"""container_serve.inference without a server: content types, decoding, limits, top-k, JSON."""

from __future__ import annotations

import base64
import io
import json

import pytest
import torch
from PIL import Image
from torch import nn

from container_serve import inference
from container_serve.errors import (
    BadRequest,
    NotAcceptable,
    PayloadTooLarge,
    ServeError,
    UnsupportedMediaType,
    error_body,
)
from container_serve.settings import ServeSettings
from model_artifact.manifest import Manifest
from model_artifact.preprocess import EvalPreprocessing

SETTINGS = ServeSettings(max_request_bytes=200_000, max_images=3, max_pixels=1_000_000,
                    max_request_pixels=1_500_000, top_k=2)
CLASSES = ("a", "b", "c")


def encode(image: Image.Image, fmt: str, **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def photo(mode: str = "RGB", size: tuple[int, int] = (40, 30)) -> Image.Image:
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    image.paste((200, 30, 30), (0, 0, size[0] // 2, size[1] // 2))
    return image.convert(mode)


JPEG = encode(photo(), "JPEG")
PNG = encode(photo(), "PNG")


class ColourNet(nn.Module):
    """A stand-in network: logits from the mean colour (fast, deterministic, sensitive to it)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, len(CLASSES))
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(3) * 4)
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def served() -> inference.ServedModel:
    pre = EvalPreprocessing.for_image_size(32)
    manifest = Manifest(architecture="resnet50", class_names=CLASSES, preprocessing=pre)
    return inference.ServedModel(ColourNet().eval(), manifest, pre.transform(), SETTINGS)


@pytest.mark.parametrize(
    ("header", "expected"),
    [("image/jpeg", "image/jpeg"), ("Image/JPEG; charset=binary", "image/jpeg"), ("", None),
     (None, None), (" application/json ;charset=utf-8", "application/json")],
)
def test_media_type(header: str | None, expected: str | None) -> None:
    assert inference.media_type(header) == expected


def test_sniff() -> None:
    assert inference.sniff(JPEG) == "JPEG"
    assert inference.sniff(PNG) == "PNG"
    assert inference.sniff(encode(photo(), "WEBP")) == "WEBP"
    assert inference.sniff(encode(photo(), "GIF")) == "GIF"
    assert inference.sniff(b"hello world") is None


@pytest.mark.parametrize(
    "accept",
    [None, "", "*/*", "application/json", "APPLICATION/JSON; charset=utf-8",
     "text/html, application/*;q=0.8", "text/csv, */*"],
)
def test_accept_ok(accept: str | None) -> None:
    inference.check_accept(accept)


@pytest.mark.parametrize("accept", ["text/csv", "image/png, text/*", "application/json;q=0"])
def test_accept_refused(accept: str) -> None:
    with pytest.raises(NotAcceptable):
        inference.check_accept(accept)


@pytest.mark.parametrize(
    ("attributes", "k"),
    [(None, 2), ("", 2), ("top_k=3", 3), ("foo=bar; top_k = 4", 4), ("x=1,top_k=1", 1),
     ("top_k=100000", SETTINGS.top_k_max), ("other=1", 2)],
)
def test_top_k(attributes: str | None, k: int) -> None:
    assert inference.parse_top_k(attributes, SETTINGS) == k


@pytest.mark.parametrize("attributes", ["top_k=abc", "top_k=0", "top_k=-2", "top_k="])
def test_top_k_invalid(attributes: str) -> None:
    with pytest.raises(BadRequest, match="top_k"):
        inference.parse_top_k(attributes, SETTINGS)


@pytest.mark.parametrize(
    "content_type",
    ["image/jpeg", "image/png", "application/x-image", "application/octet-stream", None,
     "image/jpeg; charset=binary"],
)
def test_input_raw_image(content_type: str | None) -> None:
    assert inference.input_fn(JPEG, content_type, SETTINGS) == [JPEG]


def test_input_json_forms_str_and_bytes() -> None:
    b64 = base64.b64encode(PNG).decode()
    url_safe = base64.urlsafe_b64encode(PNG).decode()
    wrapped = "\n".join(b64[i : i + 76] for i in range(0, len(b64), 76))  # MIME line breaks
    bodies = [
        json.dumps({"image": b64}),
        json.dumps({"image": f"data:image/png;base64,{b64}"}),
        json.dumps({"images": [url_safe]}),
        json.dumps([wrapped]),
    ]
    for body in bodies:
        assert inference.input_fn(body, "application/json", SETTINGS) == [PNG]
        as_bytes = inference.input_fn(body.encode(), "application/json; charset=utf-8", SETTINGS)
        assert as_bytes == [PNG]
    batch = json.dumps({"images": [b64, base64.b64encode(JPEG).decode()]})
    assert inference.input_fn(batch, "application/json", SETTINGS) == [PNG, JPEG]


@pytest.mark.parametrize(
    ("body", "content_type", "error", "message"),
    [
        (b"1,2", "text/csv", UnsupportedMediaType, "text/csv"),
        (b"x", "multipart/form-data; boundary=x", UnsupportedMediaType, "multipart/form-data"),
        (b"", "image/jpeg", BadRequest, "empty"),
        (None, "image/jpeg", BadRequest, "empty"),
        (b"not an image", "application/octet-stream", BadRequest, "not a JPEG"),
        (b"\xff" * 300_000, "image/jpeg", PayloadTooLarge, "limit is 200000"),
        (b"{", "application/json", BadRequest, "not valid JSON"),
        (b"\xff\xfe{}", "application/json", BadRequest, "not"),
        (b'{"foo": 1}', "application/json", BadRequest, "must be"),
        (b'{"images": []}', "application/json", BadRequest, "no images"),
        (b'{"image": "***"}', "application/json", BadRequest, "base64"),
        (b'{"image": 5}', "application/json", BadRequest, "base64 string"),
        (b'{"images": ["", "", "", ""]}', "application/json", PayloadTooLarge, "limit is 3"),
        (b'{"image": ""}', "application/json", BadRequest, "empty"),
        (b'{"images": ["aGVsbG8="]}', "application/json", BadRequest, "not a JPEG"),
    ],
)
def test_input_refused(
    body: bytes | None, content_type: str, error: type[ServeError], message: str
) -> None:
    with pytest.raises(error, match=message) as caught:
        inference.input_fn(body, content_type, SETTINGS)
    assert "\n" not in caught.value.message


def variants() -> dict[str, bytes]:
    """The modes clients really send; each must decode to RGB and predict."""
    rgba = photo("RGBA")
    rgba.putalpha(128)
    palette = photo().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    sixteen = Image.linear_gradient("L").resize((40, 30)).convert("I")
    sixteen = sixteen.point(lambda v: v * 256).convert("I;16")
    return {
        "jpeg": JPEG,
        "png": PNG,
        "webp": encode(photo(), "WEBP"),
        "gray": encode(photo("L"), "PNG"),
        "cmyk": encode(photo("CMYK"), "JPEG"),
        "palette": encode(palette, "PNG"),
        "rgba": encode(rgba, "PNG"),
        "16bit": encode(sixteen, "PNG"),
        "gif": encode(palette, "GIF"),
    }


@pytest.mark.parametrize("name", sorted(variants()))
def test_predict_variants(served: inference.ServedModel, name: str) -> None:
    prediction = inference.predict_fn([variants()[name]], served)
    assert prediction.probabilities.shape == (1, len(CLASSES))
    assert torch.allclose(prediction.probabilities.sum(dim=1), torch.ones(1))


def test_exif_orientation_is_applied(served: inference.ServedModel) -> None:
    # Red in the top-left corner; orientation 3 (rotate 180) moves it to the bottom-right,
    # which the centre crop drops less of. Compare with the same pixels physically rotated.
    upright = photo(size=(64, 40))
    exif = Image.Exif()
    exif[0x0112] = 3
    tagged = encode(upright, "PNG", exif=exif)
    rotated = encode(upright.transpose(Image.Transpose.ROTATE_180), "PNG")
    tagged_p = inference.predict_fn([tagged], served).probabilities
    rotated_p = inference.predict_fn([rotated], served).probabilities
    plain_p = inference.predict_fn([encode(upright, "PNG")], served).probabilities
    assert torch.allclose(tagged_p, rotated_p, atol=1e-6)
    assert not torch.allclose(tagged_p, plain_p, atol=1e-4)


def test_predict_refuses_bad_images(served: inference.ServedModel) -> None:
    with pytest.raises(BadRequest, match=r"^image 1: .*corrupt"):
        inference.predict_fn([JPEG, JPEG[: len(JPEG) // 2]], served)
    bomb = encode(Image.new("L", (2000, 1000)), "PNG")  # 2 Mpx, a few KB compressed
    with pytest.raises(PayloadTooLarge, match="limit is 1000000 decoded pixels"):
        inference.predict_fn([bomb], served)


def test_output_sorted_top_k(served: inference.ServedModel) -> None:
    prediction = inference.predict_fn([JPEG, PNG], served)
    doc = json.loads(inference.output_fn(prediction, "application/json", 2))
    assert len(doc["predictions"]) == 2
    for row, probs in zip(doc["predictions"], prediction.probabilities, strict=True):
        top = row["top_k"]
        probabilities = [t["probability"] for t in top]
        assert probabilities == sorted(probabilities, reverse=True)
        assert len(top) == 2
        for t in top:
            assert CLASSES[t["index"]] == t["label"]
            assert t["probability"] == pytest.approx(float(probs[t["index"]]), abs=1e-7)
    # k larger than the number of classes: all classes, no error
    doc = json.loads(inference.output_fn(prediction, None, 50))
    assert len(doc["predictions"][0]["top_k"]) == len(CLASSES)


def test_error_body_is_one_line_json() -> None:
    body = error_body(413, "too\nlarge\r\n  really")
    assert "\n" not in body
    assert json.loads(body) == {
        "code": 413, "type": "Request Entity Too Large", "message": "too large really"
    }


# --- issue 16: what an outside review broke ---------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"image": ' + b"9" * 4301 + b"}", "not valid JSON: Exceeds the limit"),  # int()
        (b'{"images": [' + b"1" * 5000 + b"]}", "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),  # RecursionError
        (b'{"a":' * 30_000 + b"1" + b"}" * 30_000, "nested too deeply"),
    ],
)
def test_json_the_parser_refuses_is_a_400(body: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message) as caught:
        inference.input_fn(body, "application/json", SETTINGS)
    assert "\n" not in caught.value.message


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32",
                                      "utf-32-le", "utf-32-be"])
def test_json_must_be_utf8_as_documented(encoding: str) -> None:
    body = json.dumps({"image": base64.b64encode(PNG).decode()}).encode(encoding)
    with pytest.raises(BadRequest, match="UTF-8"):
        inference.input_fn(body, "application/json", SETTINGS)


def test_json_with_a_utf8_bom_is_utf8() -> None:
    body = b"\xef\xbb\xbf" + json.dumps({"image": base64.b64encode(PNG).decode()}).encode()
    assert inference.input_fn(body, "application/json", SETTINGS) == [PNG]


def _decode_spy(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    decoded: list[object] = []
    real = inference.decode

    def spy(image: object) -> object:
        decoded.append(image)
        return real(image)

    monkeypatch.setattr(inference, "decode", spy)
    return decoded


def test_batch_pixel_budget_is_checked_before_decoding(
    served: inference.ServedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each image passes the per-image limit (0.81 of 1 Mpx); two exceed the request's 1.5."""
    big = encode(Image.new("1", (900, 900)), "PNG")
    decoded = _decode_spy(monkeypatch)
    assert inference.predict_fn([big], served).probabilities.shape == (1, 3)
    decoded.clear()
    with pytest.raises(PayloadTooLarge) as caught:
        inference.predict_fn([big, big], served)
    assert "1620000 pixels in all" in caught.value.message
    assert "limit per request is 1500000 pixels (SERVE_MAX_REQUEST_PIXELS)" in caught.value.message
    assert decoded == []  # refused from the headers alone


def test_batch_pixel_budget_counts_resized_pixels(served: inference.ServedModel) -> None:
    # 2x600: 1,200 pixels decoded, but Resize(37) makes 37 x 11100 = 410,700; four of them
    # (1.64 Mpx) exceed the budget although they decode to 4,800 pixels.
    tall = encode(Image.new("L", (2, 600)), "PNG")
    inference.predict_fn([tall, tall, tall], served)
    with pytest.raises(PayloadTooLarge, match="limit per request"):
        inference.predict_fn([tall] * 4, served)


@pytest.mark.parametrize("size", [(8000, 6000), (8160, 6144), (6000, 8000)])
def test_phone_photos_are_served_decoded_at_draft_scale(
    served: inference.ServedModel, size: tuple[int, int]
) -> None:
    """48-50 MP JPEGs: 48x the per-image limit in the header, a 1/8-scale decode in fact."""
    jpeg = encode(Image.new("RGB", size, (120, 30, 60)), "JPEG", quality=50)
    prediction = inference.predict_fn([jpeg], served)
    assert prediction.probabilities.shape == (1, 3)


def test_pixel_limit_applies_to_what_is_decoded(served: inference.ServedModel) -> None:
    png = encode(Image.new("1", (1100, 1000)), "PNG")  # no draft mode: 1.1 Mpx decoded
    with pytest.raises(PayloadTooLarge, match="1100x1000 pixels; the limit is 1000000 decoded"):
        inference.predict_fn([png], served)


def test_header_dimensions_have_a_hard_cap(served: inference.ServedModel) -> None:
    """A JPEG header of 20000x20000 would decode at 1/8 (6.25 Mpx) but its coefficients alone
    are GBs: refused from the header, whatever draft mode would keep."""
    jpeg = bytearray(encode(Image.new("RGB", (64, 48)), "JPEG"))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = (20000).to_bytes(2, "big") * 2
    with pytest.raises(PayloadTooLarge, match="header claims 20000x20000 pixels; the limit for"):
        inference.predict_fn([bytes(jpeg)], served)


@pytest.mark.parametrize(("fmt", "content_type"), [
    ("GIF", "image/gif"), ("BMP", "image/bmp"), ("TIFF", "image/tiff"),
    ("GIF", "application/octet-stream"), ("TIFF", "image/jpeg"), ("BMP", None)])
def test_every_decoded_format_is_accepted_under_its_type_and_any_image_type(
    served: inference.ServedModel, fmt: str, content_type: str | None
) -> None:
    data = encode(photo(), fmt)
    assert inference.input_fn(data, content_type, SETTINGS) == [data]
    assert inference.predict_fn([data], served).probabilities.shape == (1, 3)


def test_pillow_opens_only_the_sniffed_format(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image as PILImage

    from model_artifact import preprocess

    opened: list[object] = []
    real = PILImage.open

    def spy(fp: object, mode: str = "r", formats: object = None) -> object:
        opened.append(formats)
        return real(fp, mode, formats)

    monkeypatch.setattr(preprocess.Image, "open", spy)
    for data, fmt in ((JPEG, "JPEG"), (PNG, "PNG"), (encode(photo(), "BMP"), "BMP")):
        preprocess.load_image(data)
        assert opened.pop() == [fmt]


def test_header_pixels_are_budgeted_per_request(served: inference.ServedModel,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Draft mode makes a big JPEG cheap to hold, not to read: the decoder still reads every
    coefficient. The hard header cap also bounds the sum over a batch."""
    from model_artifact import preprocess

    monkeypatch.setattr(inference, "MAX_HEADER_PIXELS", 60_000_000)
    monkeypatch.setattr(preprocess, "MAX_HEADER_PIXELS", 60_000_000)
    jpeg = encode(Image.new("RGB", (8000, 6000), (120, 30, 60)), "JPEG", quality=50)
    decoded = _decode_spy(monkeypatch)
    assert inference.predict_fn([jpeg], served).probabilities.shape == (1, 3)
    decoded.clear()
    with pytest.raises(PayloadTooLarge, match="headers claim 96000000 pixels in all; the limit"):
        inference.predict_fn([jpeg, jpeg], served)
    assert decoded == []
