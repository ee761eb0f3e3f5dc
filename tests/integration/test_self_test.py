"""The serving self-test end to end: the training job writes held-out inputs with its fp32
logits; a graph that answers otherwise is never served. The bad graphs: the session's compiled
variant (tests/integration/conftest.py, built once) and an int8 variant, each made from the
fp32 model with its output classes rotated, next to weights without that rotation, every
sha256 in the manifest updated, so that only the self-test can tell.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from container_serve import inference
from model_artifact.manifest import INT8, Manifest
from model_artifact.network import file_sha256, load_artifact
from model_artifact.preprocess import image_batches
from model_artifact.quantize import INT8_FILE, write_int8_variant
from model_artifact.self_test import SELF_TEST_FILE, SelfTestError, load_self_test
from tests.conftest import HELD_OUT, SAMPLE_DATA, TrainingRun
from tests.integration.test_serve_mms import run_serve, start_server, stop_server

pytestmark = pytest.mark.slow
PASSED = re.compile(r"self-test passed on the (\w+) graph: 8 held-out inputs, .* ([\d.]+) s")


def _rotate_classes(model: nn.Module) -> nn.Module:
    """The same network with its classes renamed: every top-1 answer changes."""
    with torch.no_grad():
        model.fc.weight.copy_(model.fc.weight.roll(1, 0))
        model.fc.bias.copy_(model.fc.bias.roll(1, 0))
    return model


def _with_weights(source: Path, dest: Path, model: nn.Module) -> Path:
    """A copy of ``source`` whose model.pt holds ``model``; the manifest's hash updated and the
    self-test's logits recomputed from it: a consistent fp32 artifact."""
    from model_artifact.self_test import write_self_test_file

    shutil.copytree(source, dest)
    manifest = Manifest.read(dest)
    inputs, _ = load_self_test(dest, manifest)
    torch.save(model.state_dict(), dest / manifest.weights_file)
    manifest = replace(manifest, weights_sha256=file_sha256(dest / manifest.weights_file))
    write_self_test_file(dest, model, manifest, inputs)
    return dest


@pytest.fixture(scope="module")
def bad_compiled(compiled_run: TrainingRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compiled variant of the trained model next to the weights of the rotated one."""
    model, _ = load_artifact(compiled_run.model_dir)
    return _with_weights(compiled_run.model_dir, tmp_path_factory.mktemp("bad") / "model",
                         _rotate_classes(model))


@pytest.fixture(scope="module")
def int8_artifacts(tiny_artifact: Path, tmp_path_factory: pytest.TempPathFactory
                   ) -> dict[str, Path]:
    """int8 variants quantized from the trained model (good) and from the rotated one (bad)."""
    found = {}
    for name in ("good", "bad"):
        model_dir = tmp_path_factory.mktemp(f"int8_{name}") / "model"
        shutil.copytree(tiny_artifact, model_dir)
        model, manifest = load_artifact(model_dir)
        if name == "bad":
            model = _rotate_classes(model)
        write_int8_variant(model_dir, model, manifest, HELD_OUT[:8])
        found[name] = model_dir
    return found


def _served(model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
            **env: str) -> tuple[str, float]:
    """model_fn as a worker runs it: the graph served and the self-test's seconds (its log)."""
    monkeypatch.delenv("SERVE_GRAPH", raising=False)
    # fp32 unless asked: on a CPU with AMX the default may serve the run's bf16 package
    monkeypatch.setenv("SERVE_PRECISION", "fp32")
    monkeypatch.setenv("SERVE_THREADS_PER_WORKER", "1")  # what the compiled variant is built for
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    caplog.clear()
    with caplog.at_level("INFO", logger="container_serve"):
        served = inference.model_fn(str(model_dir))
    (graph, seconds), = PASSED.findall(caplog.text)
    assert graph == served.graph
    return graph, float(seconds)


def test_training_writes_inputs_with_its_fp32_logits(tiny_run: TrainingRun) -> None:
    manifest = Manifest.read(tiny_run.model_dir)
    assert manifest.self_test is not None and manifest.self_test.images == 8
    assert manifest.self_test.sha256 == file_sha256(tiny_run.model_dir / SELF_TEST_FILE)
    inputs, logits = load_self_test(tiny_run.model_dir, manifest)
    assert inputs.shape == (8, 3, 64, 64)
    model, _ = load_artifact(tiny_run.model_dir)
    with torch.inference_mode():
        torch.testing.assert_close(model(inputs), logits, atol=1e-4, rtol=1e-4)
    assert "self-test: 8 valid images with their fp32 logits in self_test.pt" in tiny_run.log


def test_a_good_artifact_passes_on_every_graph_at_a_small_cost(
        compiled_run: TrainingRun, int8_artifacts: dict[str, Path],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    costs = {}
    for model_dir, env in ((compiled_run.model_dir, {}),
                           (compiled_run.model_dir, {"SERVE_GRAPH": "frozen"}),
                           (compiled_run.model_dir, {"SERVE_GRAPH": "eager"}),
                           (int8_artifacts["good"], {"SERVE_PRECISION": "int8"})):
        graph, seconds = _served(model_dir, monkeypatch, caplog, **env)
        costs[graph] = seconds
    print(f"self-test seconds at start (8 inputs, 64 px, 1 thread): {costs}")
    assert set(costs) == {"compiled", "frozen", "eager", "int8"}
    assert max(costs.values()) < 10, costs  # a few forward passes, not a benchmark


def test_auto_serves_the_frozen_graph_when_the_compiled_one_disagrees(
        bad_compiled: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    assert _served(bad_compiled, monkeypatch, caplog)[0] == "frozen"
    assert ("compiled variant not used (self-test failed on the compiled graph: held-out input "
            "0 gives class") in caplog.text
    monkeypatch.setenv("SERVE_GRAPH", "compiled")
    with pytest.raises(SelfTestError, match="self-test failed on the compiled graph"):
        inference.model_fn(str(bad_compiled))


def test_an_int8_variant_that_disagrees_is_refused(int8_artifacts: dict[str, Path],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVE_PRECISION", "int8")
    assert Manifest.read(int8_artifacts["bad"]).variants[INT8].sha256 == file_sha256(
        int8_artifacts["bad"] / INT8_FILE)
    with pytest.raises(SelfTestError, match="self-test failed on the int8 graph"):
        inference.model_fn(str(int8_artifacts["bad"]))


@pytest.mark.parametrize(("artifact", "env", "graph"), [
    ("compiled", {"SERVE_GRAPH": "compiled", "SERVE_PRECISION": "fp32"}, "compiled"),
    ("int8", {"SERVE_PRECISION": "int8"}, "int8"),
])
def test_serve_exits_before_the_port_opens_when_the_requested_graph_disagrees(
        bad_compiled: Path, int8_artifacts: dict[str, Path], tmp_path: Path, artifact: str,
        env: dict[str, str], graph: str) -> None:
    model_dir = bad_compiled if artifact == "compiled" else int8_artifacts["bad"]
    cmd, full_env, runtime = run_serve(model_dir, tmp_path, SERVE_THREADS_PER_WORKER="1", **env)
    proc = subprocess.run(cmd, env=full_env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, start_new_session=True)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    (line,) = [x for x in output.splitlines() if "self-test failed" in x]
    assert line.startswith("serve: cannot serve ") and f"on the {graph} graph" in line, line
    assert "Traceback" not in output and "nginx listens" not in output, output
    assert not (runtime / "nginx.conf").exists()
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", int(cmd[-1]))) != 0  # nothing listens


def test_serve_auto_answers_with_the_fallback_graph_as_fp32_does(
        bad_compiled: Path, tmp_path: Path) -> None:
    photos = sorted((SAMPLE_DATA / "test").glob("*/*.jpg"))[:3]
    server = start_server(bad_compiled, tmp_path, photos[0].read_bytes(),
                          SERVE_THREADS_PER_WORKER="1")
    try:
        replies = [server.invoke(path.read_bytes()) for path in photos]  # top 5: every class
        assert server.request("GET", "/ping").status == 200
    finally:
        stop_server(server)
    log = server.log.read_text()
    # compiled-bf16 where this CPU has AMX and the run kept that package: it fails the same way
    assert re.search(r"compiled variant not used \(self-test failed on the compiled(-bf16)? "
                     r"graph", log)
    assert re.search(r"serving \S+: frozen graph", log) and "compiled graph, 1 thread" not in log
    assert "compiled-bf16 graph, 1 thread" not in log
    model, manifest = load_artifact(bad_compiled)
    model = model.to(memory_format=torch.channels_last)
    # Served probabilities are calibrated by default: softmax(logits / T) (serving-api.md).
    temperature = manifest.calibration.temperature if manifest.calibration else 1.0
    for path, reply in zip(photos, replies, strict=True):
        assert reply.status == 200, reply.body[:300]
        top = {t["index"]: t["probability"] for t in reply.json()["predictions"][0]["top_k"]}
        with torch.inference_mode():
            logits = model(next(image_batches([path], manifest.preprocessing)))
            expected = torch.softmax(logits / temperature, dim=1)[0]
        assert [top[i] for i in range(len(expected))] == pytest.approx(expected.tolist(),
                                                                      abs=1e-4)
