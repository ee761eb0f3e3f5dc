"""GPU serving's parts that run without a GPU: SERVE_DEVICE / SERVE_BATCH_SIZE /
SERVE_BATCH_DELAY_MS parsing, the device and precision choice, MMS's batched registration, and
several requests in one handler call sharing one forward pass (docs/serving-api.md, "GPU
serving")."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import pytest
import torch
from torchvision.models import resnet18

from container_serve import batching, inference
from container_serve.env_names import (
    BATCH_DELAY_MS_ENV,
    BATCH_SIZE_ENV,
    DEVICE_ENV,
    MMS_DEFAULT_WORKERS_ENV,
    MULTI_MODEL_ENV,
    WORKERS_ENV,
)
from container_serve.settings import ServeSettings, ServeSettingsError, resolve_device
from container_serve.transformer import BATCH_HEADER
from model_artifact.manifest import Manifest
from model_artifact.preprocess import EvalPreprocessing
from model_artifact.self_test import SelfTestError, run_self_test

from .test_serve_inference import SETTINGS, encode, photo
from .test_serve_transformer import context_for, ready

CLASSES = ("a", "b", "c", "d")
GPU, NO_GPU = (lambda: True), (lambda: False)


def settings(cuda: Any = NO_GPU, **env: str) -> ServeSettings:
    return ServeSettings.from_env(env, cuda_available=cuda)


# --- settings and device choice ------------------------------------------------------------

@pytest.mark.parametrize(("requested", "cuda", "device"), [
    ("", GPU, "cuda"), ("auto", GPU, "cuda"), ("", NO_GPU, "cpu"), ("AUTO", NO_GPU, "cpu"),
    ("cpu", GPU, "cpu"), ("cuda", GPU, "cuda")])
def test_device_choice(requested: str, cuda: Any, device: str) -> None:
    assert settings(cuda, **{DEVICE_ENV: requested}).device == device


def test_cuda_without_a_gpu_is_refused_with_the_variable_name() -> None:
    with pytest.raises(ServeSettingsError, match=DEVICE_ENV):
        settings(NO_GPU, **{DEVICE_ENV: "cuda"})
    with pytest.raises(ServeSettingsError, match=DEVICE_ENV):
        settings(GPU, **{DEVICE_ENV: "tpu"})


def test_auto_asks_torch_where_there_is_an_nvidia_device(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from container_serve import settings as settings_module

    monkeypatch.setattr(settings_module, "nvidia_devices", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    # No NVIDIA device node: cpu, whatever torch would say (and without importing it).
    monkeypatch.setattr(settings_module, "nvidia_devices", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cpu"


def test_parsing_the_settings_does_not_import_torch_without_a_gpu(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """serve's entry process parses them and never holds torch (start-up time)."""
    import subprocess
    import sys

    code = ("import sys; from container_serve.settings import ServeSettings; "
            "from container_serve import settings as m; m.nvidia_devices = lambda: False; "
            "s = ServeSettings.from_env({}); print(s.device, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["cpu", "False"]


def test_batching_is_off_on_cpu_and_on_on_cuda_by_default() -> None:
    cpu, cuda = settings(NO_GPU), settings(GPU)
    assert (cpu.batch_size, cuda.batch_size) == (1, 8)
    assert cuda.batch_delay_ms == 5


def test_batch_knobs_parse_and_reach_the_workers() -> None:
    s = settings(NO_GPU, **{BATCH_SIZE_ENV: "4", BATCH_DELAY_MS_ENV: "0", WORKERS_ENV: "2"})
    assert (s.batch_size, s.batch_delay_ms) == (4, 0)
    exported = s.worker_env()
    assert exported[DEVICE_ENV] == "cpu" and exported[BATCH_SIZE_ENV] == "4"
    assert ServeSettings.from_env(exported, cuda_available=GPU) == s  # workers: same settings
    # A batch transform keeps every slot of every worker busy.
    assert s.execution_parameters()["MaxConcurrentTransforms"] == 8


@pytest.mark.parametrize("env", [{BATCH_SIZE_ENV: "0"}, {BATCH_SIZE_ENV: "four"},
                                 {BATCH_DELAY_MS_ENV: "-1"},
                                 {BATCH_SIZE_ENV: "4", MULTI_MODEL_ENV: "true"}])
def test_bad_batch_knobs_are_refused_with_their_name(env: dict[str, str]) -> None:
    with pytest.raises(ServeSettingsError, match="SERVE_BATCH"):
        settings(GPU, **env)


def test_multi_model_mode_does_not_batch_on_cuda() -> None:
    assert settings(GPU, **{MULTI_MODEL_ENV: "true"}).batch_size == 1


@pytest.mark.parametrize(("capability", "half"), [((7, 5), True), ((8, 0), True),
                                                  ((9, 0), True), ((6, 1), False)])
def test_fp16_only_where_the_gpu_has_tensor_cores(monkeypatch: pytest.MonkeyPatch,
                                                  capability: tuple[int, int],
                                                  half: bool) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert inference.half_supported(torch.device("cuda")) is half


# --- MMS registration ----------------------------------------------------------------------

def test_batched_registration_asks_mms_for_the_batch_and_the_workers() -> None:
    s = ServeSettings(workers=3, batch_size=8, batch_delay_ms=5, timeout_seconds=60)
    query = dict(urllib.parse.parse_qsl(batching.registration_query(s, "/run/mms-model")))
    assert query == {"url": "/run/mms-model", "model_name": "model", "batch_size": "8",
                     "max_batch_delay": "5", "initial_workers": "3", "response_timeout": "60",
                     "synchronous": "false"}
    assert batching.mms_env(s) == {MMS_DEFAULT_WORKERS_ENV: "1"}
    assert batching.mms_env(ServeSettings()) == {}  # no batching: MMS's start-up model serves


# --- several requests in one handler call --------------------------------------------------

@pytest.fixture(scope="module")
def network_served() -> inference.ServedModel:
    """A real (small, random) ResNet in eval mode, so a batch of images differs from a batch of
    one by float summation order only."""
    torch.manual_seed(0)
    pre = EvalPreprocessing.for_image_size(32)
    manifest = Manifest(architecture="resnet50", class_names=CLASSES, preprocessing=pre)
    network = resnet18(num_classes=len(CLASSES)).eval().to(memory_format=torch.channels_last)
    return inference.ServedModel(network, manifest, pre.transform(), SETTINGS)


def images() -> list[bytes]:
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (120, 120, 10)]
    out = []
    for colour in colours:
        image = photo()
        image.paste(colour, (10, 5, 35, 25))
        out.append(encode(image, "JPEG"))
    return out


def one_by_one(served: inference.ServedModel, bodies: list[bytes]) -> list[dict[str, Any]]:
    answers = []
    for body in bodies:
        context = context_for({"Content-Type": "image/jpeg",
                               "X-Amzn-SageMaker-Custom-Attributes": "top_k=4"})
        answers.append(json.loads(ready(served).transform([{"body": body}], context)[0]))
    return answers


def probabilities(answer: dict[str, Any]) -> dict[int, float]:
    return {t["index"]: t["probability"] for t in answer["predictions"][0]["top_k"]}


def test_requests_of_a_batch_share_one_forward_and_get_their_own_answers(
        network_served: inference.ServedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    bodies = images()
    alone = one_by_one(network_served, bodies)
    forwards: list[int] = []
    network = network_served.model
    monkeypatch.setattr(network, "forward", lambda x: forwards.append(len(x)) or
                        type(network).forward(network, x))
    context = context_for(*[{"Content-Type": "image/jpeg",
                             "X-Amzn-SageMaker-Custom-Attributes": "top_k=4"}] * len(bodies))
    responses = ready(network_served).transform([{"body": b} for b in bodies], context)
    assert forwards == [len(bodies)]  # one forward pass for the four requests
    for idx, (response, single) in enumerate(zip(responses, alone, strict=True)):
        assert context.get_response_status(idx)[0] == 200
        assert context.get_response_headers(idx)[BATCH_HEADER] == str(len(bodies))
        got, expected = probabilities(json.loads(response)), probabilities(single)
        assert got.keys() == expected.keys()
        assert max(abs(got[k] - expected[k]) for k in got) < 1e-5


def test_a_bad_request_in_a_batch_fails_alone(network_served: inference.ServedModel) -> None:
    good = images()
    truncated = good[1][: len(good[1]) // 3]  # sniffs as JPEG, fails to decode: a 400 at decode
    headers = [{"Content-Type": "image/jpeg", "X-Amzn-SageMaker-Custom-Attributes": "top_k=2"},
               {"Content-Type": "image/jpeg"},
               {"Content-Type": "text/csv"},
               {"Content-Type": "image/jpeg", "X-Amzn-SageMaker-Custom-Attributes": "top_k=x"},
               {"Content-Type": "image/jpeg", "X-Amzn-SageMaker-Custom-Attributes": "top_k=3"}]
    data = [{"body": good[0]}, {"body": truncated}, {"body": b"1,2"}, {"body": good[2]},
            {"body": good[3]}]
    context = context_for(*headers)
    responses = ready(network_served).transform(data, context)
    codes = [context.get_response_status(i)[0] for i in range(len(data))]
    assert codes == [200, 400, 415, 400, 200]
    alone = one_by_one(network_served, [good[0], good[3]])
    for idx, single, k in ((0, alone[0], 2), (4, alone[1], 3)):
        top = json.loads(responses[idx])["predictions"][0]["top_k"]
        expected = single["predictions"][0]["top_k"][:k]
        assert [t["index"] for t in top] == [t["index"] for t in expected]
        assert all(abs(a["probability"] - b["probability"]) < 1e-5
                   for a, b in zip(top, expected, strict=True))
    assert json.loads(responses[1])["code"] == 400  # its own one-line JSON error


def test_a_failed_shared_forward_fails_its_requests_with_a_generic_500(
        network_served: inference.ServedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("CUDA out of memory (secret internals)")

    monkeypatch.setattr(inference, "predict_requests", broken)
    context = context_for({"Content-Type": "image/jpeg"}, {"Content-Type": "text/csv"})
    responses = ready(network_served).transform([{"body": images()[0]}, {"body": b"1"}], context)
    assert [context.get_response_status(i)[0] for i in range(2)] == [500, 415]
    assert "secret" not in responses[0]


# --- the fp16 self-test tolerance ----------------------------------------------------------

def test_fp16_graph_is_self_tested_with_the_fp16_tolerance(
        network_served: inference.ServedModel) -> None:
    """The served fp16 graph (CPU half here; the GPU's fp16 on a GPU) passes; a drift of 1% of
    the logit range, refused for an fp32 graph, is within what fp16 is allowed."""
    torch.manual_seed(1)
    network = network_served.model
    inputs = torch.randn(4, 3, 32, 32) * 3
    with torch.inference_mode():
        reference = network(inputs.contiguous(memory_format=torch.channels_last))
    half = inference.OnDevice(resnet18(num_classes=len(CLASSES)).eval(), torch.device("cpu"),
                              torch.float16)
    half.network.load_state_dict(network.state_dict())
    half.network.half()
    run_self_test(half, "cuda-fp16", inputs, reference)
    drift = 0.01 * float(reference.abs().max())

    def drifting(x: torch.Tensor) -> torch.Tensor:
        return network(x) + drift

    with pytest.raises(SelfTestError):
        run_self_test(drifting, "eager", inputs, reference)
    assert run_self_test(drifting, "cuda-fp16", inputs, reference).max_difference >= drift * 0.99


def test_on_cuda_multi_model_loads_every_model_whole() -> None:
    """The shared backbones are a CPU path; on the GPU each model is its own network."""
    from container_serve.resident_models import ResidentModels

    manifest = Manifest(architecture="resnet50", class_names=CLASSES,
                        preprocessing=EvalPreprocessing.for_image_size(32),
                        backbone_sha256="a" * 64, head_sha256="b" * 64, head_file="head.pt")
    assert ResidentModels(ServeSettings())._shares(manifest)
    assert not ResidentModels(ServeSettings(device="cuda"))._shares(manifest)


def test_only_the_start_up_models_worker_skips_loading() -> None:
    start_up = context_for({})  # MMS's start-up model: batch size 1
    batched = context_for({}, {}, {}, {})
    assert batching.replaced_at_start(4, start_up)
    assert not batching.replaced_at_start(4, batched)
    assert not batching.replaced_at_start(1, start_up)  # no batching: it is the model


def test_nginx_names_the_batched_model_for_invocations(tmp_path: Any) -> None:
    from container_serve import front

    batched = front.render_config(ServeSettings(batch_size=4), str(tmp_path), 1 << 20)
    plain = front.render_config(ServeSettings(), str(tmp_path), 1 << 20)
    assert "location = /invocations" in batched and "rewrite ^ /predictions/model break;" in batched
    assert "/predictions/" not in plain


def test_on_cuda_the_served_graph_is_the_device_one_and_self_tested_as_fp16(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        network_served: inference.ServedModel) -> None:
    """load_served on cuda serves _cuda_model's graph (here stood in by the same ResNet in CPU
    half precision) after the artifact's self-test, run on that graph with fp16's tolerance."""
    import logging

    from model_artifact.self_test import write_self_test_file

    network = network_served.model
    inputs = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    manifest = write_self_test_file(tmp_path, network, network_served.manifest, inputs)
    half = resnet18(num_classes=len(CLASSES)).eval()
    half.load_state_dict(network.state_dict())
    on_device = inference.OnDevice(half.half(), torch.device("cpu"), torch.float16)
    asked: list[str] = []
    monkeypatch.setattr(inference, "_cuda_model", lambda model_dir, m, s: asked.append(
        s.device) or (on_device, manifest, "cuda-fp16"))
    with caplog.at_level(logging.INFO):
        served = inference.load_served(str(tmp_path), ServeSettings(device="cuda"))
    assert asked == ["cuda"] and served.model is on_device and served.graph == "cuda-fp16"
    assert any(m.startswith("self-test passed on the cuda-fp16 graph") for m in caplog.messages)
