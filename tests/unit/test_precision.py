"""Precision by device capability (docs/training.md): bf16 only where the GPU has it natively
(compute capability >= 8.0), fp16 + gradient scaler below, fp32 on CPU; an explicit request the
device cannot run fails with a one-line reason. The GPU is simulated by patching torch.cuda."""

from __future__ import annotations

import pytest
import torch

from container_train.engine import Precision
from container_train.errors import TrainingError
from container_train.main import main

CUDA = torch.device("cuda", 0)
GPUS = {"Tesla T4": (7, 5), "Tesla V100-SXM2-16GB": (7, 0), "NVIDIA A10G": (8, 6),
        "NVIDIA A100-SXM4-40GB": (8, 0), "NVIDIA H100 80GB HBM3": (9, 0), "NVIDIA L4": (8, 9)}


@pytest.fixture
def gpu(monkeypatch):
    """Pretend to be on the named GPU: torch.cuda answers as it would there."""
    def use(name: str) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: GPUS[name])
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        # What the issue is about: torch says yes on a T4 too (emulated bf16).
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    return use


@pytest.mark.parametrize(("name", "expected"), [
    ("Tesla T4", "fp16 autocast + grad scaler"),
    ("Tesla V100-SXM2-16GB", "fp16 autocast + grad scaler"),
    ("NVIDIA A100-SXM4-40GB", "bf16 autocast"),
    ("NVIDIA A10G", "bf16 autocast"),
    ("NVIDIA L4", "bf16 autocast"),
    ("NVIDIA H100 80GB HBM3", "bf16 autocast"),
])
def test_auto_picks_bf16_only_from_compute_capability_8(gpu, name, expected):
    gpu(name)
    precision = Precision.for_device(CUDA, "auto")
    assert precision.name == expected
    assert (precision.scaler is not None) == (expected.startswith("fp16"))


def test_auto_on_cpu_is_fp32():
    precision = Precision.for_device(torch.device("cpu"), "auto")
    assert (precision.name, precision.short_name, precision.scaler) == ("fp32", "fp32", None)


@pytest.mark.parametrize(("name", "requested", "expected"), [
    ("Tesla T4", "fp32", "fp32"),
    ("Tesla T4", "fp16", "fp16"),
    ("NVIDIA A10G", "fp16", "fp16"),
    ("NVIDIA A10G", "fp32", "fp32"),
    ("NVIDIA A10G", "bf16", "bf16"),
])
def test_explicit_precision_is_honoured_where_the_gpu_can(gpu, name, requested, expected):
    gpu(name)
    assert Precision.for_device(CUDA, requested).short_name == expected


def test_bf16_on_a_t4_fails_naming_the_gpu_and_the_way_out(gpu):
    gpu("Tesla T4")
    with pytest.raises(TrainingError) as err:
        Precision.for_device(CUDA, "bf16")
    assert str(err.value) == (
        "precision=bf16 needs a GPU with compute capability 8.0 or higher (native bf16) and "
        "this one is Tesla T4, compute capability 7.5: use precision=fp16 or auto")


@pytest.mark.parametrize("requested", ["fp16", "bf16"])
def test_half_precision_on_cpu_fails_with_a_one_line_failure_file(tmp_path, monkeypatch,
                                                                 sample_data, requested):
    monkeypatch.setenv("SM_OUTPUT_DIR", str(tmp_path / "output"))
    code = main(["--data-dir", str(sample_data), "--model-dir", str(tmp_path / "model"),
                 "--output-data-dir", str(tmp_path / "out"), "--precision", requested])
    assert code == 1
    first = (tmp_path / "output" / "failure").read_text().splitlines()[0]
    assert first == (f"precision={requested} needs a CUDA GPU and this job runs on cpu: use "
                     "precision=auto or fp32")
    assert not (tmp_path / "model" / "model.pt").exists()


def test_bf16_on_a_t4_fails_the_job_before_reading_data(gpu, tmp_path, monkeypatch,
                                                         sample_data):
    gpu("Tesla T4")
    monkeypatch.setenv("SM_OUTPUT_DIR", str(tmp_path / "output"))
    code = main(["--data-dir", str(sample_data), "--model-dir", str(tmp_path / "model"),
                 "--output-data-dir", str(tmp_path / "out"), "--precision", "bf16"])
    assert code == 1
    first = (tmp_path / "output" / "failure").read_text().splitlines()[0]
    assert first.startswith("precision=bf16 needs a GPU with compute capability 8.0")
