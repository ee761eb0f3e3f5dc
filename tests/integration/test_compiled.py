"""The compiled variant end to end: written by a real training run (``--compile true``, the
host's g++), equal to the fp32 model, chosen by serving when it loads, and refused (with the
TorchScript graph instead, or a clear error under ``SERVE_GRAPH=compiled``) when it does not.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from container_serve import inference
from model_artifact.compiled import (
    AMX_BF16,
    COMPILED_FILE,
    COMPILED_FORMAT,
    compile_package,
    has_amx,
    load_compiled,
    load_fresh_package,
)
from model_artifact.manifest import (
    COMPILED,
    COMPILED_AMX_BF16,
    COMPILED_AVX512,
    MANIFEST_FILE,
    ArtifactError,
    Manifest,
)
from model_artifact.network import load_artifact
from model_artifact.preprocess import image_batches
from tests.conftest import HELD_OUT, TrainingRun

pytestmark = pytest.mark.slow



def _copy(artifact: Path, to: Path) -> Path:
    shutil.copytree(artifact, to)
    return to


def _edit_variant(model_dir: Path, **fields: object) -> None:
    """Every compiled package the run kept (v3; v4 and bf16 where this CPU made them) edited
    alike, so that none loads."""
    path = model_dir / MANIFEST_FILE
    data = json.loads(path.read_text())
    for name in (COMPILED, COMPILED_AVX512, COMPILED_AMX_BF16):
        if name in data["variants"]:
            data["variants"][name].update(fields)
    path.write_text(json.dumps(data))


def test_training_writes_the_variant(compiled_run: TrainingRun) -> None:
    variant = Manifest.read(compiled_run.model_dir).variants[COMPILED]
    assert variant.file == COMPILED_FILE and variant.format == COMPILED_FORMAT
    assert (compiled_run.model_dir / COMPILED_FILE).is_file() and len(variant.sha256) == 64
    assert variant.torch == torch.__version__ and variant.threads == 1
    assert variant.agreement_images == 25 and variant.top1_agreement == 1.0  # the valid split
    assert variant.max_logit_difference is not None and variant.max_logit_difference < 1e-3
    assert "compiled variant model_compiled.pt2 in" in compiled_run.log


def test_training_considers_the_bf16_package_where_the_cpu_can_check_it(
        compiled_run: TrainingRun) -> None:
    """On an AMX CPU the job builds the bf16 package and says whether it kept it; elsewhere it
    says why it did not build one."""
    if has_amx():
        assert ("compiled_amx_bf16 variant kept" in compiled_run.log
                or "compiled_amx_bf16 variant not kept" in compiled_run.log), compiled_run.log
    else:
        assert "compiled_amx_bf16 variant not built: this CPU" in compiled_run.log
        assert COMPILED_AMX_BF16 not in Manifest.read(compiled_run.model_dir).variants


@pytest.mark.skipif(not has_amx(), reason="the bf16 package runs on CPUs with AMX only")
def test_the_bf16_package_answers_like_fp32_within_its_tolerance(
        compiled_run: TrainingRun, tmp_path: Path) -> None:
    from model_artifact.self_test import BF16_TOLERANCE

    fp32, manifest = load_artifact(compiled_run.model_dir)
    fp32 = fp32.to(memory_format=torch.channels_last).eval()
    path = compile_package(fp32, manifest.preprocessing.crop_size, tmp_path / "bf16.pt2",
                           target=AMX_BF16)
    bf16 = load_fresh_package(path, AMX_BF16)
    with torch.inference_mode():
        batch = next(image_batches(HELD_OUT[:8], manifest.preprocessing, batch_size=8))
        expected, got = fp32(batch), bf16(batch)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    allowed = BF16_TOLERANCE * max(1.0, float(expected.abs().max()))
    assert float((got - expected).abs().max()) < allowed
    assert float((got - expected).abs().max()) > 1e-6  # really bfloat16, not the fp32 graph


def test_compiled_logits_equal_fp32_at_batch_1_and_batch_5(compiled_run: TrainingRun) -> None:
    fp32, manifest = load_artifact(compiled_run.model_dir)
    fp32 = fp32.to(memory_format=torch.channels_last)
    compiled = load_compiled(compiled_run.model_dir, manifest, bf16=False)  # fp32 packages
    with torch.inference_mode():
        for batch in image_batches(HELD_OUT[:10], manifest.preprocessing, batch_size=5):
            expected = fp32(batch)
            torch.testing.assert_close(compiled(batch), expected, atol=1e-3, rtol=1e-3)
            torch.testing.assert_close(compiled(batch[:1]), expected[:1], atol=1e-3, rtol=1e-3)


def test_serving_prefers_the_compiled_graph(compiled_run: TrainingRun,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SERVE_GRAPH", raising=False)
    monkeypatch.setenv("SERVE_THREADS_PER_WORKER", "1")  # what it was compiled for
    monkeypatch.setenv("SERVE_PRECISION", "fp32")  # not bf16, where this CPU has AMX
    auto = inference.model_fn(str(compiled_run.model_dir))
    monkeypatch.setenv("SERVE_GRAPH", "frozen")
    frozen = inference.model_fn(str(compiled_run.model_dir))
    assert (auto.graph, frozen.graph) == ("compiled", "frozen")
    batch = next(image_batches(HELD_OUT[:4], auto.manifest.preprocessing))
    with torch.inference_mode():
        torch.testing.assert_close(auto.model(batch), frozen.model(batch), atol=1e-3, rtol=1e-3)


def test_loading_runs_no_compiler(compiled_run: TrainingRun,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's loader lists the CPU's vector ISAs, by default by compiling a probe program per
    ISA: 7 s of cold start per worker where g++ is installed. load_compiled answers from the
    CPU's flags instead; a probe here would mean the cold start is back."""
    from torch._inductor import cpu_vec_isa

    probes: list[str] = []
    monkeypatch.setattr(cpu_vec_isa.VecISA, "check_build",
                        lambda isa, code: probes.append(str(isa)) or True)

    def forget() -> None:  # both are functools caches, filled by any earlier compile here
        cpu_vec_isa.valid_vec_isa_list.cache_clear()
        cpu_vec_isa.VecISA._VecISA__bool__impl.cache_clear()

    forget()
    try:
        model = load_compiled(compiled_run.model_dir, Manifest.read(compiled_run.model_dir))
    finally:
        forget()
    assert probes == []
    with torch.inference_mode():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 5)


def test_loading_needs_no_compiler_and_loads_the_package_once(
        compiled_run: TrainingRun, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU with AVX512-BF16 or AMX, torch's newer pt2 reader compiles ISA probes after
    loading the package; the serving image has no C++ compiler, so it failed, logged "Loading
    outdated pt2 file" in every worker and loaded the package a second time. Stand-in: the
    device-information step fails as it does there."""
    from torch._inductor import codecache, exc

    def amx_cpu_without_compiler(device_type: str) -> dict[str, str]:
        raise exc.InvalidCxxCompiler
    monkeypatch.setattr(codecache, "get_device_information", amx_cpu_without_compiler)
    real = torch._C._aoti.AOTIModelPackageLoader
    loads: list[str] = []

    def counting(path: str, *args: object) -> object:
        loads.append(path)
        return real(path, *args)
    counting.load_metadata_from_package = real.load_metadata_from_package  # type: ignore[attr-defined]
    monkeypatch.setattr(torch._C._aoti, "AOTIModelPackageLoader", counting)
    model = load_compiled(compiled_run.model_dir, Manifest.read(compiled_run.model_dir))
    assert len(loads) == 1
    with torch.inference_mode():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 5)


@pytest.mark.parametrize(("fields", "reason"), [
    ({"torch": "1.0.0"}, "built by torch 1.0.0"),
    ({"sha256": "0" * 64}, "sha256 does not match"),
    ({"format": "aotinductor-arm64"}, "format 'aotinductor-arm64'"),
    ({"threads": 3}, "specialised for 3 thread"),
])
def test_an_unusable_variant_falls_back_or_fails_clearly(
        compiled_run: TrainingRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, fields: dict, reason: str) -> None:
    model_dir = _copy(compiled_run.model_dir, tmp_path / "model")
    _edit_variant(model_dir, **fields)
    monkeypatch.delenv("SERVE_GRAPH", raising=False)
    monkeypatch.setenv("SERVE_THREADS_PER_WORKER", "1")
    with caplog.at_level("WARNING", logger="container_serve.inference"):
        served = inference.model_fn(str(model_dir))
    assert served.graph == "frozen"
    assert "compiled variant not used" in caplog.text and reason in caplog.text
    monkeypatch.setenv("SERVE_GRAPH", "compiled")
    with pytest.raises(ArtifactError, match=reason):
        inference.model_fn(str(model_dir))


def test_compiled_without_a_variant_is_an_error(tiny_artifact: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVE_GRAPH", "compiled")
    with pytest.raises(ArtifactError, match="no compiled variant .*compile=true"):
        inference.model_fn(str(tiny_artifact))
    monkeypatch.setenv("SERVE_GRAPH", "auto")
    assert inference.model_fn(str(tiny_artifact)).graph == "frozen"
