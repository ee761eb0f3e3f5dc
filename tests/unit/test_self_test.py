"""The serving self-test's pieces on a toy network: the manifest's ``self_test`` block, the file
(written and read back), the comparison and its tolerances, the auto fallback and the refusal
serve reads (startup_check, lifecycle, serve's watcher). End to end with real graphs and real
MMS: tests/integration/test_self_test.py."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from container_serve import startup_check
from container_serve.lifecycle import SELF_TEST_REFUSAL_FILE, ServeState
from container_serve.settings import ServeSettings
from model_artifact.manifest import MANIFEST_FILE, ArtifactError, Manifest
from model_artifact.preprocess import EvalPreprocessing
from model_artifact.self_test import (
    BF16_TOLERANCE,
    FP32_TOLERANCE,
    INT8_TOLERANCE,
    SELF_TEST_FILE,
    SELF_TEST_IMAGES,
    SelfTestError,
    load_self_test,
    run_self_test,
    write_self_test_file,
)

CROP, CLASSES = 4, 3


def _toy() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * CROP * CROP, CLASSES)).eval()


def _manifest() -> Manifest:
    return Manifest(architecture="resnet50", class_names=("a", "b", "c"),
                    preprocessing=EvalPreprocessing(resize=CROP, crop_size=CROP))


@pytest.fixture
def artifact(tmp_path: Path) -> tuple[Path, nn.Module, Manifest]:
    model = _toy()
    inputs = torch.randn(20, 3, CROP, CROP, generator=torch.Generator().manual_seed(1))
    manifest = write_self_test_file(tmp_path, model, _manifest(), inputs)
    return tmp_path, model, manifest


def _shifted(model: nn.Module, share: float, reference: torch.Tensor) -> nn.Module:
    """``model`` with every logit raised by ``share`` of the reference's largest |logit|."""
    shift = share * float(reference.abs().max())
    return lambda x: model(x) + shift  # type: ignore[return-value]


def test_the_block_is_written_read_back_and_absent_when_empty(artifact) -> None:
    model_dir, _, manifest = artifact
    data = json.loads((model_dir / MANIFEST_FILE).read_text())
    assert data["self_test"]["file"] == SELF_TEST_FILE
    assert data["self_test"]["images"] == SELF_TEST_IMAGES  # the widest 8 of 20 candidates
    assert Manifest.read(model_dir).self_test == manifest.self_test
    assert "self_test" not in _manifest().to_dict()  # older readers see what they saw before
    for bad, field in (({"file": "../x", "sha256": "0" * 64, "images": 1}, "file"),
                       ({"file": "x", "sha256": "abc", "images": 1}, "sha256"),
                       ({"file": "x", "sha256": "0" * 64, "images": 0}, "images")):
        with pytest.raises(ArtifactError, match=f"self_test.*{field}"):
            Manifest.from_dict({**data, "self_test": bad})


def test_the_file_holds_the_clearest_inputs_and_the_models_logits(artifact) -> None:
    model_dir, model, manifest = artifact
    inputs, logits = load_self_test(model_dir, manifest)
    assert inputs.shape == (SELF_TEST_IMAGES, 3, CROP, CROP) and inputs.dtype == torch.float32
    with torch.inference_mode():
        torch.testing.assert_close(model(inputs), logits)
        candidates = torch.randn(20, 3, CROP, CROP, generator=torch.Generator().manual_seed(1))
        top2 = model(candidates.half().float()).topk(2, dim=1).values
    margins = sorted((top2[:, 0] - top2[:, 1]).tolist(), reverse=True)
    top2 = logits.topk(2, dim=1).values
    assert sorted((top2[:, 0] - top2[:, 1]).tolist(), reverse=True) == pytest.approx(
        margins[:SELF_TEST_IMAGES])


def test_an_altered_file_is_refused(artifact) -> None:
    model_dir, _, manifest = artifact
    (model_dir / SELF_TEST_FILE).write_bytes(b"not the file")
    with pytest.raises(ArtifactError, match="self_test.pt: sha256 does not match"):
        load_self_test(model_dir, manifest)
    assert load_self_test(model_dir, _manifest()) is None  # no block: no self-test


def test_tolerances_fp32_tight_int8_looser(artifact) -> None:
    model_dir, model, manifest = artifact
    inputs, reference = load_self_test(model_dir, manifest)
    result = run_self_test(model, "frozen", inputs, reference)
    assert result.images == SELF_TEST_IMAGES and result.max_difference < 1e-5
    drift = (FP32_TOLERANCE + INT8_TOLERANCE) / 2  # too much for fp32, fine for int8
    run_self_test(_shifted(model, drift, reference), "int8", inputs, reference)
    with pytest.raises(SelfTestError, match="self-test failed on the compiled graph: held-out "
                                            "input 0 .* logits up to .*allowed"):
        run_self_test(_shifted(model, drift, reference), "compiled", inputs, reference)
    with pytest.raises(SelfTestError, match="int8 graph"):
        run_self_test(_shifted(model, 2 * INT8_TOLERANCE, reference), "int8", inputs, reference)


def test_the_bf16_package_gets_a_tolerance_between_fp32s_and_int8s(artifact) -> None:
    model_dir, model, manifest = artifact
    inputs, reference = load_self_test(model_dir, manifest)
    assert FP32_TOLERANCE < BF16_TOLERANCE < INT8_TOLERANCE
    drift = (FP32_TOLERANCE + BF16_TOLERANCE) / 2
    run_self_test(_shifted(model, drift, reference), "compiled-bf16", inputs, reference)
    with pytest.raises(SelfTestError, match="on the compiled-bf16 graph"):
        run_self_test(_shifted(model, (BF16_TOLERANCE + INT8_TOLERANCE) / 2, reference),
                      "compiled-bf16", inputs, reference)


def test_a_different_top1_is_refused_even_within_the_logit_tolerance() -> None:
    reference = torch.tensor([[1.0, 0.9, 0.0]])  # allowed under int8: 0.15 x max(1, 1.0)
    inputs = torch.zeros(1, 3, CROP, CROP)

    def near(x: torch.Tensor) -> torch.Tensor:  # 0.1 away, but class 1 comes first
        return torch.tensor([[0.9, 1.0, 0.0]])
    with pytest.raises(SelfTestError, match=r"gives class 1 \(training: 0\), logits up to 0.1 "):
        run_self_test(near, "int8", inputs, reference)


def _settings(graph: str) -> ServeSettings:
    return ServeSettings(graph=graph)


@pytest.mark.parametrize("compiled", ["compiled", "compiled-bf16"])
def test_auto_falls_back_from_a_failing_compiled_graph_and_says_so(
        artifact, caplog: pytest.LogCaptureFixture, compiled: str) -> None:
    model_dir, model, manifest = artifact
    _, reference = load_self_test(model_dir, manifest)
    bad = _shifted(model, 1.0, reference)
    with caplog.at_level(logging.INFO, logger="container_serve.startup_check"):
        served, graph = startup_check.self_tested(str(model_dir), manifest, bad, compiled,
                                                  _settings("auto"),
                                                  lambda: (model, manifest, "frozen"))
    assert (served, graph) == (model, "frozen")
    warning, passed = caplog.messages
    assert warning.startswith(f"compiled variant not used (self-test failed on the {compiled} ")
    assert passed.startswith("self-test passed on the frozen graph: 8 held-out inputs")


@pytest.mark.parametrize(("graph", "requested"), [("compiled", "compiled"), ("int8", "auto"),
                                                  ("frozen", "frozen")])
def test_a_requested_graph_that_fails_is_refused_and_recorded_for_serve(
        artifact, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, graph: str,
        requested: str) -> None:
    model_dir, model, manifest = artifact
    _, reference = load_self_test(model_dir, manifest)
    monkeypatch.setenv("SERVE_RUNTIME_DIR", str(tmp_path))
    with pytest.raises(SelfTestError, match=f"on the {graph} graph") as refused:
        startup_check.self_tested(str(model_dir), manifest, _shifted(model, 1.0, reference),
                                  graph, _settings(requested), lambda: pytest.fail("fallback"))
    assert (tmp_path / SELF_TEST_REFUSAL_FILE).read_text() == f"{refused.value}\n"


def test_multi_model_mode_refuses_the_model_but_leaves_serve_running(
        artifact, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One bad model among many must not stop the endpoint: no refusal file for serve."""
    model_dir, model, manifest = artifact
    _, reference = load_self_test(model_dir, manifest)
    monkeypatch.setenv("SERVE_RUNTIME_DIR", str(tmp_path))
    with pytest.raises(SelfTestError):
        startup_check.self_tested(str(model_dir), manifest, _shifted(model, 1.0, reference),
                                  "frozen", ServeSettings(graph="frozen", multi_model=True),
                                  lambda: pytest.fail("fallback"))
    assert not (tmp_path / SELF_TEST_REFUSAL_FILE).exists()


def test_an_artifact_without_a_self_test_serves_as_before_with_one_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = _toy()
    with caplog.at_level(logging.INFO, logger="container_serve.startup_check"):
        served = startup_check.self_tested(str(tmp_path), _manifest(), model, "frozen",
                                           _settings("auto"), lambda: pytest.fail("fallback"))
    assert served == (model, "frozen")
    assert caplog.messages == ["no self-test ran: the artifact carries no held-out inputs "
                               "(written before the manifest's self_test field)"]


def test_serve_stops_with_a_workers_refusal_and_ping_says_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from container_serve import serve

    monkeypatch.setenv("SERVE_INSTANCE_ID", "test")
    supervisor = serve._Supervisor(ServeSettings(), str(tmp_path))
    assert supervisor.lifecycle.move(ServeState.LOADING, "no worker has the model loaded yet")
    watcher = threading.Thread(target=supervisor._watch_refusals, args=(0.01,))
    watcher.start()
    (tmp_path / SELF_TEST_REFUSAL_FILE).write_text("self-test failed on the frozen graph: x\n")
    watcher.join(timeout=10)
    assert not watcher.is_alive()
    assert supervisor.lifecycle.ping() == (
        503, "a worker refused to serve the model: self-test failed on the frozen graph: x")


class _Exited(Exception):
    pass


def _worker_env(monkeypatch: pytest.MonkeyPatch, runtime: Path, model_dir: Path) -> Path:
    """A single-model worker's environment as serve exports it; returns the gate file."""
    from container_serve import transformer

    def exit_(code: int) -> None:
        raise _Exited(code)
    monkeypatch.setattr(transformer.os, "_exit", exit_)
    gate = runtime / "artifact-checked"
    for name, value in (("SERVE_RUNTIME_DIR", runtime), ("SERVE_MODEL_DIR", model_dir),
                        ("SERVE_ARTIFACT_GATE", gate)):
        monkeypatch.setenv(name, str(value))
    monkeypatch.delenv("SAGEMAKER_MULTI_MODEL", raising=False)
    return gate


def test_a_worker_that_cannot_load_the_model_records_why_and_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The workers are serve's artifact check: a worker's failure must reach serve as one line
    (the refusal file) and end the worker with a non-zero code, never open the port."""
    from container_serve.transformer import ServeTransformer

    runtime, broken = tmp_path / "runtime", tmp_path / "no-manifest"
    runtime.mkdir()
    broken.mkdir()
    gate = _worker_env(monkeypatch, runtime, broken)
    with pytest.raises(_Exited) as exited:
        ServeTransformer().validate_and_initialize()
    assert exited.value.args == (1,)
    reason = (runtime / SELF_TEST_REFUSAL_FILE).read_text()
    assert MANIFEST_FILE in reason and str(broken) in reason and reason.count("\n") == 1
    assert not gate.exists()


def test_the_first_worker_to_load_the_model_opens_the_gate(
        artifact, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from container_serve import transformer

    runtime = tmp_path / "runtime"
    runtime.mkdir()
    gate = _worker_env(monkeypatch, runtime, tmp_path)
    monkeypatch.setattr(transformer.inference, "model_fn", lambda model_dir: "served")
    served = transformer.ServeTransformer()
    served.validate_and_initialize()
    assert gate.exists() and not (runtime / SELF_TEST_REFUSAL_FILE).exists()


@pytest.mark.parametrize("first", ["refusal", "gate"])
def test_serve_opens_the_port_only_after_a_worker_loaded_the_model(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: str) -> None:
    from container_serve import serve

    monkeypatch.setenv("SERVE_INSTANCE_ID", "test")
    monkeypatch.setenv("SERVE_MODEL_DIR", "/opt/ml/model")
    monkeypatch.setenv("SERVE_ARTIFACT_GATE", str(tmp_path / "artifact-checked"))
    supervisor = serve._Supervisor(ServeSettings(), str(tmp_path))
    waiter = threading.Thread(target=lambda: setattr(
        supervisor, "loaded", supervisor._first_worker_loaded(0.01)))
    waiter.start()
    if first == "refusal":
        (tmp_path / SELF_TEST_REFUSAL_FILE).write_text("ArtifactError: no manifest.json\n")
    else:
        (tmp_path / "artifact-checked").touch()
    waiter.join(timeout=10)
    assert not waiter.is_alive()
    assert supervisor.loaded is (first == "gate")
    if first == "refusal":
        assert supervisor.lifecycle.ping() == (
            503, "cannot serve /opt/ml/model: ArtifactError: no manifest.json")
    else:
        assert supervisor.lifecycle.state is ServeState.STARTING
