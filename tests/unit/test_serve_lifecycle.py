"""serve's start-up as one state (container_serve/lifecycle.py) and the /ping answer read from
it: 200 only in READY, otherwise 503 with a one-line JSON reason."""

from __future__ import annotations

import json

import pytest

from container_serve import health
from container_serve.lifecycle import Lifecycle, ServeState

S = ServeState


def loading() -> Lifecycle:
    lifecycle = Lifecycle()
    assert lifecycle.move(S.LOADING, "port open")
    return lifecycle


def test_a_start_goes_starting_loading_ready_degraded_and_back() -> None:
    lifecycle = Lifecycle()
    assert lifecycle.state is S.STARTING and lifecycle.ping()[0] == 503
    lifecycle.observe_mms("Healthy")  # no port yet: MMS's word changes nothing
    assert lifecycle.state is S.STARTING
    assert lifecycle.move(S.LOADING, "port open")
    lifecycle.observe_mms("Partial Healthy")  # some workers still loading
    assert lifecycle.snapshot() == (
        S.LOADING,
        "fewer workers have the model loaded than configured (multi-model-server: "
        "Partial Healthy)")
    lifecycle.observe_mms("Healthy")
    assert lifecycle.state is S.READY and lifecycle.ping()[0] == 200
    lifecycle.observe_mms("Partial Healthy")  # a worker died
    assert lifecycle.state is S.DEGRADED and lifecycle.ping()[0] == 503
    lifecycle.observe_mms("Unhealthy")
    assert lifecycle.snapshot() == (S.DEGRADED, "no worker has the model loaded: Unhealthy")
    lifecycle.observe_mms("Healthy")  # MMS forked the worker again
    assert lifecycle.state is S.READY


@pytest.mark.parametrize("final", [S.STOPPING, S.FAILED])
@pytest.mark.parametrize("before", [S.STARTING, S.LOADING, S.READY])
def test_stopping_and_failed_are_final(before: ServeState, final: ServeState) -> None:
    lifecycle = loading() if before is not S.STARTING else Lifecycle()
    if before is S.READY:
        lifecycle.observe_mms("Healthy")
    assert lifecycle.state is before
    assert lifecycle.move(final, "why")
    assert lifecycle.is_final()
    # What follows is an effect of the stop (nginx stopped by serve, MMS exiting, a late ping).
    assert not lifecycle.move(S.FAILED, "nginx exited 0")
    assert not lifecycle.move(S.STOPPING, "SIGTERM")
    assert not lifecycle.move(S.LOADING, "port open")
    lifecycle.observe_mms("Healthy")
    assert lifecycle.snapshot() == (final, "why") and lifecycle.ping() == (503, "why")


def test_ready_is_not_entered_by_hand_before_loading() -> None:
    lifecycle = Lifecycle()
    assert not lifecycle.move(S.READY, "every worker")
    assert not lifecycle.move(S.DEGRADED, "a worker died")
    assert lifecycle.state is S.STARTING


def ping_with_mms_saying(monkeypatch: pytest.MonkeyPatch, lifecycle: Lifecycle,
                         mms: str) -> tuple[int, dict]:
    monkeypatch.setattr(health, "mms_status", lambda socket: mms)
    code, body = health.ping("/nonexistent.sock", lifecycle)
    assert "\n" not in body
    return code, json.loads(body)


def test_ping_answers_from_the_state(monkeypatch: pytest.MonkeyPatch) -> None:
    lifecycle = loading()
    assert ping_with_mms_saying(monkeypatch, lifecycle, "Healthy") == (200, {"status": "Healthy"})
    code, body = ping_with_mms_saying(monkeypatch, lifecycle, "Partial Healthy")
    assert code == body["code"] == 503
    assert "fewer workers have the model loaded" in body["message"]
    lifecycle.move(S.STOPPING, "stopping on SIGTERM")  # MMS still says Healthy meanwhile
    code, body = ping_with_mms_saying(monkeypatch, lifecycle, "Healthy")
    assert (code, body["message"]) == (503, "stopping on SIGTERM")


def test_ping_without_an_answer_from_mms_is_503() -> None:
    code, body = health.ping("/nonexistent/mms.sock", loading())
    assert code == 503
    assert json.loads(body)["message"].startswith(
        "no worker has the model loaded: no answer from multi-model-server")
