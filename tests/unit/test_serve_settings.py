"""container_serve.settings (ServeSettings) and the serve CLI: knobs, defaults, refusals."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from container_serve import env_names, serve, settings
from container_serve.settings import ServeSettings, ServeSettingsError


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "available_cpus", lambda: 4)
    s = ServeSettings.from_env({})
    assert (s.port, s.workers, s.threads_per_worker, s.timeout_seconds) == (8080, 4, 1, 60)
    assert s.max_request_bytes == settings.MMS_DEFAULT_MAX_REQUEST_BYTES == 6_553_500
    assert (s.max_images, s.top_k, s.top_k_max) == (16, 5, 100)


@pytest.mark.parametrize(("workers", "threads"), [("1", 4), ("2", 2), ("3", 1), ("8", 1)])
def test_threads_fit_the_cpus(monkeypatch: pytest.MonkeyPatch, workers: str, threads: int) -> None:
    monkeypatch.setattr(settings, "available_cpus", lambda: 4)
    s = ServeSettings.from_env({env_names.WORKERS_ENV: workers})
    assert s.threads_per_worker == threads
    assert s.workers * s.threads_per_worker <= max(4, s.workers)


def test_overrides() -> None:
    s = ServeSettings.from_env({
        "SAGEMAKER_BIND_TO_PORT": "9001",
        "SAGEMAKER_MODEL_SERVER_WORKERS": "2",
        "SERVE_THREADS_PER_WORKER": "3",
        "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS": "15",
        "SAGEMAKER_MAX_PAYLOAD_IN_MB": "10",
        "SERVE_MAX_IMAGES": "4",
        "SERVE_MAX_PIXELS": "1000",
        "SERVE_TOP_K": "50",
        "SERVE_TOP_K_MAX": "10",
    })
    assert (s.port, s.workers, s.threads_per_worker, s.timeout_seconds) == (9001, 2, 3, 15)
    assert s.max_request_bytes == 10 * 1024 * 1024
    assert (s.max_images, s.max_pixels) == (4, 1000)
    assert (s.top_k, s.top_k_max) == (10, 10)  # the default never exceeds the cap
    assert ServeSettings.from_env({"SERVE_MAX_REQUEST_BYTES": "123"}).max_request_bytes == 123


def test_worker_env_round_trips() -> None:
    s = ServeSettings.from_env({"SAGEMAKER_MODEL_SERVER_WORKERS": "2", "SERVE_TOP_K": "3"})
    env = s.worker_env()
    assert ServeSettings.from_env(env) == s
    assert env["OMP_NUM_THREADS"] == str(s.threads_per_worker)


@pytest.mark.parametrize(
    ("name", "value"),
    [("SAGEMAKER_MODEL_SERVER_WORKERS", "two"), ("SAGEMAKER_BIND_TO_PORT", "70000"),
     ("SERVE_MAX_IMAGES", "0"), ("SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS", "-1"),
     ("SERVE_TOP_K", "1.5")],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ServeSettingsError, match=name):
        ServeSettings.from_env({name: value})


def test_available_cpus_is_positive() -> None:
    assert settings.available_cpus() >= 1


def test_cli_arguments() -> None:
    args = serve.parse_args(["serve", "--model-dir", "/m", "--port", "9000"])
    assert (args.command, args.model_dir, args.port) == ("serve", "/m", 9000)
    assert serve.parse_args([]).command == "serve"  # `docker run IMAGE` with no argument
    assert serve.parse_args(["check"]).command == "check"


def test_serve_refuses_bad_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SAGEMAKER_MODEL_SERVER_WORKERS", "many")
    assert serve.main(["--model-dir", "/nonexistent"]) == 2
    assert "SAGEMAKER_MODEL_SERVER_WORKERS='many'" in capsys.readouterr().err


def test_check_names_the_missing_manifest(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    assert serve.main(["check", "--model-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "manifest.json: not found" in err
    assert "Traceback" not in err


def test_request_pixel_budget_defaults_to_twice_the_image_limit() -> None:
    assert ServeSettings.from_env({}).max_request_pixels == 80_000_000
    assert ServeSettings.from_env({"SERVE_MAX_PIXELS": "1000"}).max_request_pixels == 2000
    s = ServeSettings.from_env({"SERVE_MAX_REQUEST_PIXELS": "123456"})
    assert s.max_request_pixels == 123456
    assert ServeSettings.from_env(s.worker_env()).max_request_pixels == 123456
    with pytest.raises(ServeSettingsError, match="SERVE_MAX_REQUEST_PIXELS"):
        ServeSettings.from_env({"SERVE_MAX_REQUEST_PIXELS": "lots"})


def test_the_defaults_are_the_dataclass_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """One definition of each default: an empty environment on one CPU gives ServeSettings()."""
    monkeypatch.setattr(settings, "available_cpus", lambda: 1)
    assert ServeSettings.from_env({}) == ServeSettings()


def test_every_environment_name_is_spelled_once() -> None:
    """Serving's variable names live in container_serve/env_names.py; the other modules import
    them, so a renamed variable cannot be missed in one of its readers."""
    package = Path(serve.__file__).parent
    name = re.compile(r"[\"'](?:SERVE|SAGEMAKER|MMS)_[A-Z0-9_]+[\"']")
    spelled = {str(path.name): name.findall(path.read_text()) for path in package.glob("*.py")
               if path.name != "env_names.py"}
    assert {k: v for k, v in spelled.items() if v} == {}


def test_precision_and_graph_knobs() -> None:  # moved here from test_quantize.py
    assert ServeSettings.from_env({}).precision == "auto"  # fp32, or bf16 on AMX if checked
    assert ServeSettings.from_env({"SERVE_PRECISION": "FP32"}).precision == "fp32"
    assert ServeSettings.from_env({"SERVE_PRECISION": "INT8"}).precision == "int8"
    env = ServeSettings.from_env({"SERVE_PRECISION": "int8"}).worker_env()
    assert env["SERVE_PRECISION"] == "int8"
    with pytest.raises(ServeSettingsError,
                       match="SERVE_PRECISION='fp16' must be one of auto, fp32, int8"):
        ServeSettings.from_env({"SERVE_PRECISION": "fp16"})
    assert ServeSettings.from_env({}).graph == "auto"
    env = ServeSettings.from_env({"SERVE_GRAPH": "Compiled"}).worker_env()
    assert env["SERVE_GRAPH"] == "compiled"
    with pytest.raises(ServeSettingsError,
                       match="SERVE_GRAPH='inductor' must be one of auto, compiled"):
        ServeSettings.from_env({"SERVE_GRAPH": "inductor"})


def test_async_raises_the_payload_and_time_out_defaults() -> None:
    """SERVE_ASYNC=true (deploy.py --async-output sets it): SageMaker asynchronous inference's
    limits, 1 GB bodies and one hour per request; the explicit knobs still win."""
    s = ServeSettings.from_env({"SERVE_ASYNC": "true"})
    assert s.asynchronous
    assert s.max_request_bytes == 1024 ** 3
    assert s.timeout_seconds == 3600
    assert ServeSettings.from_env(s.worker_env()) == s  # the workers compute the same
    explicit = ServeSettings.from_env({"SERVE_ASYNC": "1", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "50",
                                       "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS": "600"})
    assert (explicit.max_request_bytes, explicit.timeout_seconds) == (50 * 1024 * 1024, 600)
    real_time = ServeSettings.from_env({"SERVE_ASYNC": "false"})
    assert (real_time.max_request_bytes, real_time.timeout_seconds) == (6_553_500, 60)
    # the pixel limits bound decoding whatever the bytes: unchanged
    assert s.max_pixels == real_time.max_pixels
    with pytest.raises(ServeSettingsError, match="SERVE_ASYNC='yes please'"):
        ServeSettings.from_env({"SERVE_ASYNC": "yes please"})
