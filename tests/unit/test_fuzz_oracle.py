"""bench/fuzz_serve.py's own checks: expectations from the request and the docs, logs read
from each file's own offset."""

from __future__ import annotations

from pathlib import Path

from bench.fuzz_serve import (
    MMS_REQUEST_SLACK,
    Case,
    Expect,
    HostMMS,
    Img,
    Limits,
    image_outcome,
    images_outcome,
)

LIMITS = Limits(max_bytes=1000, max_images=4, max_pixels=40_000_000)
RESIZE = 256


def test_restart_lines_added_to_an_earlier_log_file_are_seen(tmp_path: Path) -> None:
    """The old check sliced the concatenated logs by their total length: a line appended to
    the first file while the last one also grew fell outside the slice."""
    server = HostMMS.__new__(HostMMS)
    server.log_path, server.runtime = tmp_path / "serve.log", tmp_path / "runtime"
    (server.runtime / "logs").mkdir(parents=True)
    serve_log, worker_log = server.log_path, server.runtime / "logs" / "model_log.log"
    serve_log.write_text("started\n")
    worker_log.write_text("x" * 100 + "\n")
    marks = server.log_marks()
    with serve_log.open("a") as log:
        log.write("Backend worker process died\n")
    with worker_log.open("a") as log:
        log.write("y" * 500 + "\n")
    new = server.logs_since(marks)
    assert "Backend worker process died" in new
    assert "started" not in new and "x" * 100 not in new


def test_pixel_expectations_follow_the_documented_rules() -> None:
    phone = Img(b"\xff\xd8\xff", "JPEG", (8160, 6144))  # decoded at 1/8: 1020 x 768
    assert image_outcome(phone, LIMITS, RESIZE) == {200}
    assert image_outcome(Img(b"\x89PNG", "PNG", (6324, 6325)), LIMITS, RESIZE) == {200}
    assert image_outcome(Img(b"\x89PNG", "PNG", (6324, 6326)), LIMITS, RESIZE) == {413}
    assert image_outcome(Img(b"\x89PNG", "PNG", (1, 600)), LIMITS, RESIZE) == {200}
    assert image_outcome(Img(b"\x89PNG", "PNG", (1, 700)), LIMITS, RESIZE) == {413}  # resized
    assert image_outcome(Img(b"\xff\xd8\xff", "JPEG", (20000, 20000)), LIMITS, RESIZE) == {413}
    square = Img(b"\x89PNG", "PNG", (6000, 6000))
    assert images_outcome([square, square], LIMITS, RESIZE) == {200}  # 72 of 80 Mpx
    assert images_outcome([square] * 3, LIMITS, RESIZE) == {413}


def test_documented_order_of_checks() -> None:
    def case(size: int, before_body: int = 0) -> set[int]:
        expect = Expect(frozenset({200}))
        done = Case("x", b"\0" * size, expect, before_body=before_body).finish(LIMITS)
        return set(done.expect.statuses)

    assert case(1000) == {200}
    assert case(1001) == {413}  # the handler's body limit
    assert case(1001, before_body=406) == {406}  # Accept comes first
    assert case(1001 + MMS_REQUEST_SLACK, before_body=415) == {413}  # nginx's limit first
