"""The int8 variant end to end: written by a real training run (``--int8 true``), agreeing with
fp32, served through real MMS with ``SERVE_PRECISION=int8``, and refused at start when absent.

Agreement threshold on the tiny fixture (64 px, one epoch from random init, 49 held-out photos):
0.9. A barely trained tiny model has small logit margins, so int8 rounding can flip a few
near-ties that a trained 224 px model would not (bench/serving_speed.py checks >= 0.99 at 224 px);
0.9 still fails a broken recipe (wrong preprocessing, no calibration, a mis-fused layer),
which lands near chance, about 0.2-0.5 with 5 classes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from container_serve import inference
from model_artifact.manifest import INT8, MANIFEST_FILE, Manifest
from model_artifact.network import load_artifact
from model_artifact.preprocess import image_batches
from model_artifact.quantize import INT8_FILE, INT8_FORMAT, load_int8
from tests.conftest import HELD_OUT, TrainingRun, sample_run
from tests.integration.test_serve_mms import Server, run_serve, start_server, stop_server

pytestmark = pytest.mark.slow

MIN_AGREEMENT = 0.9


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory: pytest.TempPathFactory) -> TrainingRun:
    return sample_run(tmp_path_factory, "int8_run", "--int8", "true")


@pytest.fixture(scope="module")
def int8_artifact(int8_run: TrainingRun) -> Path:
    return int8_run.model_dir


def test_training_writes_the_variant(int8_run: TrainingRun) -> None:
    manifest = Manifest.read(int8_run.model_dir)
    variant = manifest.variants[INT8]
    assert variant.file == INT8_FILE and variant.format == INT8_FORMAT
    assert (int8_run.model_dir / INT8_FILE).is_file() and len(variant.sha256) == 64
    assert variant.calibration_images == 64  # of the 89 training photos
    assert variant.agreement_images == 25  # the valid split, held out from calibration
    assert variant.top1_agreement is not None and variant.top1_agreement >= MIN_AGREEMENT
    assert f"int8 variant {INT8_FILE}: calibrated on 64 training images" in int8_run.log
    assert variant.torch == torch.__version__ and variant.threads == 1  # the package's ties


def test_int8_top1_agrees_with_fp32(int8_artifact: Path) -> None:
    fp32, manifest = load_artifact(int8_artifact)
    fp32 = fp32.to(memory_format=torch.channels_last)
    int8 = load_int8(int8_artifact, manifest)
    a, b = [], []
    with torch.inference_mode():
        for batch in image_batches(HELD_OUT, manifest.preprocessing):
            a += fp32(batch).argmax(1).tolist()
            b += int8(batch).argmax(1).tolist()
    agreement = sum(x == y for x, y in zip(a, b, strict=True)) / len(a)
    assert len(a) == 49 and agreement >= MIN_AGREEMENT, (agreement, a, b)


def test_serving_warns_when_int8_agrees_too_little(
        int8_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(int8_artifact, model_dir)
    data = json.loads((model_dir / MANIFEST_FILE).read_text())
    monkeypatch.setenv("SERVE_PRECISION", "int8")
    for agreement, warned in ((0.9, True), (1.0, False)):
        data["variants"][INT8]["top1_agreement"] = agreement
        (model_dir / MANIFEST_FILE).write_text(json.dumps(data))
        caplog.clear()
        with caplog.at_level("WARNING", logger="container_serve.inference"):
            assert inference.model_fn(str(model_dir)).graph == "int8"
        assert ("gives fp32's top-1 class for 90.0% of 25" in caplog.text) is warned


@pytest.fixture(scope="module")
def int8_server(int8_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(int8_artifact, tmp_path_factory.mktemp("serve_int8"),
                          HELD_OUT[0].read_bytes(), SERVE_PRECISION="int8")
    yield server
    stop_server(server)


def test_int8_served_through_mms(int8_server: Server, int8_artifact: Path) -> None:
    fp32, manifest = load_artifact(int8_artifact)
    fp32 = fp32.to(memory_format=torch.channels_last)
    served, expected = [], []
    for path in HELD_OUT[:10]:
        reply = int8_server.invoke(path.read_bytes())
        assert reply.status == 200, reply.body[:500]
        top = reply.json()["predictions"][0]["top_k"]
        assert abs(sum(t["probability"] for t in top) - 1.0) < 1e-4  # all 5 classes
        served.append(top[0]["index"])
        batch = next(image_batches([path], manifest.preprocessing))
        with torch.inference_mode():
            expected.append(int(fp32(batch).argmax(1)))
    assert sum(s == e for s, e in zip(served, expected, strict=True)) >= 9, (served, expected)
    assert int8_server.proc.poll() is None


def test_int8_without_variant_fails_at_start(serve_artifact: Path, tmp_path: Path) -> None:
    assert not Manifest.read(serve_artifact).variants  # the default run has no int8 model
    cmd, env, runtime = run_serve(serve_artifact, tmp_path, SERVE_PRECISION="int8")
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=180, start_new_session=True)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert "no int8 variant" in output and "int8=true" in output, output
    assert "Traceback" not in output
    # MMS started on its private socket meanwhile, but the port never opened and its workers
    # never loaded a model.
    assert not (runtime / "nginx.conf").exists() and "Model model loaded io_fd" not in output
