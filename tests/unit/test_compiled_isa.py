"""Compiled variants per instruction-set level: the manifest keeps them, serving loads the best
one this CPU runs (bf16 on AMX when training measured it agreeing with fp32 and SERVE_PRECISION
allows it, x86-64-v4 on AVX-512, else x86-64-v3) and falls back to v3 when the better one
fails a check; training keeps a better-ISA package only where it is faster, and the bf16 one
only where it also agrees.

No compiler runs here: the CPU's capability and the package loader are stand-ins.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
import torch

from model_artifact import compiled
from model_artifact.manifest import (
    COMPILED,
    COMPILED_AMX_BF16,
    COMPILED_AVX512,
    Manifest,
    Variant,
)
from model_artifact.preprocess import EvalPreprocessing

V3_ENTRY = {"file": "model_compiled.pt2", "format": "aotinductor-x86-64-v3-batch1",
            "torch": torch.__version__, "threads": 1}
V4_ENTRY = {"file": "model_compiled_avx512.pt2", "format": "aotinductor-x86-64-v4-batch1",
            "torch": torch.__version__, "threads": 1}
BF16_ENTRY = {"file": "model_compiled_amx_bf16.pt2",
              "format": "aotinductor-x86-64-v4-amx-bf16-batch1", "torch": torch.__version__,
              "threads": 1, "top1_agreement": 0.995, "agreement_images": 200}


def _artifact(model_dir: Path, with_v4: bool = True, bf16: dict | None = None) -> Manifest:
    """Manifest plus package files (stand-in bytes, their true hashes); ``bf16``: the bf16
    variant's entry, if any."""
    variants = {}
    entries = [(COMPILED, V3_ENTRY), (COMPILED_AVX512, V4_ENTRY)][:2 if with_v4 else 1]
    for name, entry in entries + ([(COMPILED_AMX_BF16, bf16)] if bf16 else []):
        data = f"package {name}".encode()
        (model_dir / entry["file"]).write_bytes(data)
        variants[name] = {**entry, "sha256": hashlib.sha256(data).hexdigest()}
    base = Manifest("resnet50", ("a", "b"), EvalPreprocessing.for_image_size(32)).to_dict()
    return Manifest.from_dict({**base, "variants": variants})


@pytest.fixture
def loaded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files the (stand-in) package loader opened, by name."""
    opened: list[str] = []

    def load(path: Path):
        opened.append(Path(path).name)
        return lambda x: torch.zeros(x.shape[0], 2)
    monkeypatch.setattr(compiled, "_load_package", load)
    return opened


def _cpu(monkeypatch: pytest.MonkeyPatch, capability: str, amx: bool = False) -> None:
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(compiled, "has_amx", lambda: amx)


def test_the_avx512_variant_round_trips_and_older_manifests_still_read(tmp_path: Path) -> None:
    manifest = _artifact(tmp_path)
    again = Manifest.from_dict(json.loads(json.dumps(manifest.to_dict())))
    assert again.variants[COMPILED_AVX512] == Variant(**{**V4_ENTRY, "sha256": again.variants[
        COMPILED_AVX512].sha256})
    assert again.variants[COMPILED].format == "aotinductor-x86-64-v3-batch1"
    assert set(_artifact(tmp_path, with_v4=False).to_dict()["variants"]) == {COMPILED}


@pytest.mark.parametrize(("capability", "chosen"), [
    ("AVX512", "model_compiled_avx512.pt2"),
    ("AVX2", "model_compiled.pt2"),
])
def test_serving_loads_the_best_variant_this_cpu_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loaded: list[str],
        caplog: pytest.LogCaptureFixture, capability: str, chosen: str) -> None:
    _cpu(monkeypatch, capability)
    with caplog.at_level(logging.INFO, logger="model_artifact.compiled"):
        model = compiled.load_compiled(tmp_path, _artifact(tmp_path))
    assert loaded == [chosen]
    assert model.target.file == chosen
    assert f"chosen for this CPU ({capability})" in caplog.text


@pytest.mark.parametrize(("amx", "entry", "bf16", "chosen"), [
    (True, BF16_ENTRY, True, "model_compiled_amx_bf16.pt2"),
    (True, BF16_ENTRY, False, "model_compiled_avx512.pt2"),  # SERVE_PRECISION=fp32
    (False, BF16_ENTRY, True, "model_compiled_avx512.pt2"),  # AVX-512 without AMX
    (True, {**BF16_ENTRY, "top1_agreement": 0.99}, True, "model_compiled_avx512.pt2"),
    (True, {k: v for k, v in BF16_ENTRY.items() if k != "top1_agreement"}, True,
     "model_compiled_avx512.pt2"),  # no agreement recorded: nothing says it answers like fp32
])
def test_serving_uses_bf16_only_on_amx_when_it_agrees_and_is_allowed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loaded: list[str],
        caplog: pytest.LogCaptureFixture, amx: bool, entry: dict, bf16: bool,
        chosen: str) -> None:
    _cpu(monkeypatch, "AVX512", amx=amx)
    with caplog.at_level(logging.INFO, logger="model_artifact.compiled"):
        model = compiled.load_compiled(tmp_path, _artifact(tmp_path, bf16=entry), bf16=bf16)
    assert loaded == [chosen] and model.target.file == chosen
    assert model.target.graph == ("compiled-bf16" if "bf16" in chosen else "compiled")
    if "bf16" in chosen:
        assert "(x86-64-v4, bfloat16) chosen for this CPU (AVX512, AMX)" in caplog.text


def test_a_bf16_package_is_refused_on_a_cpu_without_amx(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loaded: list[str]) -> None:
    _cpu(monkeypatch, "AVX512", amx=False)
    manifest = _artifact(tmp_path, bf16=BF16_ENTRY)
    with pytest.raises(compiled.ArtifactError, match="compiled_amx_bf16 variant needs AMX"):
        compiled.load_package_variant(tmp_path, COMPILED_AMX_BF16,
                                      manifest.variants[COMPILED_AMX_BF16],
                                      target=compiled.AMX_BF16)
    assert loaded == []


def test_an_old_artifact_serves_its_v3_package_on_avx512(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loaded: list[str]) -> None:
    _cpu(monkeypatch, "AVX512")
    compiled.load_compiled(tmp_path, _artifact(tmp_path, with_v4=False))
    assert loaded == ["model_compiled.pt2"]


@pytest.mark.parametrize(("damage", "reason"), [
    (lambda p: p.unlink(), "not found|does not exist|missing|No such file"),
    (lambda p: p.write_bytes(b"another library"), "sha256 does not match"),
])
def test_a_broken_avx512_package_falls_back_to_v3(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loaded: list[str],
        caplog: pytest.LogCaptureFixture, damage, reason: str) -> None:
    _cpu(monkeypatch, "AVX512")
    manifest = _artifact(tmp_path)
    damage(tmp_path / V4_ENTRY["file"])
    with caplog.at_level(logging.WARNING, logger="model_artifact.compiled"):
        model = compiled.load_compiled(tmp_path, manifest)
    assert loaded == ["model_compiled.pt2"] and model.target.variant == COMPILED
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert warning.startswith("compiled_avx512 variant not used")
    import re
    assert re.search(reason, warning), warning


def test_compiler_settings_follow_the_target(tmp_path: Path) -> None:
    import torch._inductor.config as config

    for target in compiled.TARGETS:
        with compiled._inductor_settings(str(tmp_path), target.march, target.simdlen):
            assert (config.cpp.march, config.cpp.simdlen) == (target.march, target.simdlen)
            assert config.freezing
    assert (compiled.V4.march, compiled.V4.simdlen) == ("x86-64-v4", 512)
    assert (compiled.V3.march, compiled.V3.simdlen) == ("x86-64-v3", 256)


class _Timed:
    def __init__(self, ms: float, target: compiled.IsaTarget) -> None:
        self.ms, self.target = ms, target


def _training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capability: str,
              v4_ms: float, v3_ms: float = 80.0, target: compiled.IsaTarget = compiled.V4,
              amx: bool = False, agreement: float = 1.0) -> tuple[Manifest, list[str]]:
    """_add_if_faster with compiling, checking and timing stood in for: the manifest it
    returns, and the variants it compiled."""
    _cpu(monkeypatch, capability, amx)
    manifest = _artifact(tmp_path, with_v4=False)
    built: list[str] = []

    def write_target(model_dir, model, manifest, paths, target):
        built.append(target.variant)
        (Path(model_dir) / target.file).write_bytes(b"package")
        variant = Variant(file=target.file, format=target.format, sha256="ab" * 32,
                          torch=torch.__version__, threads=1, top1_agreement=agreement,
                          agreement_images=200)
        return manifest.with_variant(target.variant, variant), _Timed(v4_ms, target)
    monkeypatch.setattr(compiled, "_write_target", write_target)
    monkeypatch.setattr(compiled, "batch1_ms", lambda network, size: network.ms)
    result = compiled._add_if_faster(tmp_path, torch.nn.Identity(), manifest, ["x.jpg"],
                                     _Timed(v3_ms, compiled.V3), target)
    return result, built


def test_training_keeps_the_avx512_package_only_when_it_is_faster(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kept, _ = _training(tmp_path, monkeypatch, "AVX512", v4_ms=60.0)
    assert COMPILED_AVX512 in kept.variants and (tmp_path / V4_ENTRY["file"]).is_file()
    slower, _ = _training(tmp_path, monkeypatch, "AVX512", v4_ms=79.0)
    assert COMPILED_AVX512 not in slower.variants
    assert not (tmp_path / V4_ENTRY["file"]).exists()


def test_training_on_an_avx2_cpu_builds_no_avx512_package(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result, built = _training(tmp_path, monkeypatch, "AVX2", v4_ms=10.0)
    assert built == [] and set(result.variants) == {COMPILED}


@pytest.mark.parametrize(("agreement", "ms", "kept"), [
    (0.995, 30.0, True),
    (0.99, 30.0, False),  # faster, but 2 answers in 200 changed: over the bar
    (1.0, 79.0, False),  # agrees, but not faster than the fp32 package
])
def test_training_keeps_the_bf16_package_only_when_it_agrees_and_is_faster(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        agreement: float, ms: float, kept: bool) -> None:
    with caplog.at_level(logging.INFO, logger="model_artifact.compiled"):
        result, built = _training(tmp_path, monkeypatch, "AVX512", v4_ms=ms,
                                  target=compiled.AMX_BF16, amx=True, agreement=agreement)
    assert built == [COMPILED_AMX_BF16]
    assert (COMPILED_AMX_BF16 in result.variants) is kept
    assert (tmp_path / BF16_ENTRY["file"]).is_file() is kept
    if agreement < 0.995:
        assert "top-1 agreement with fp32 0.9900 on 200 images is under the bar" in caplog.text


def test_training_without_amx_builds_no_bf16_package(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result, built = _training(tmp_path, monkeypatch, "AVX512", v4_ms=10.0,
                              target=compiled.AMX_BF16, amx=False)
    assert built == [] and set(result.variants) == {COMPILED}
