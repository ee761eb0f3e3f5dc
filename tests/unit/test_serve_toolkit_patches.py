"""The sagemaker-inference / multi-model-server patches are written for one pinned version of
each (container_serve/toolkit_patches.py): serve refuses any other with one line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from container_serve import serve, toolkit_patches
from container_serve.transformer import ServeTransformer

ROOT = Path(__file__).resolve().parents[2]


def test_the_installed_toolkit_is_the_pinned_one() -> None:
    assert toolkit_patches.version_refusal() is None


def test_another_toolkit_version_is_refused_in_one_line() -> None:
    found = {"sagemaker-inference": "1.10.2", "multi-model-server": "1.1.11"}
    refusal = toolkit_patches.version_refusal(found.get)
    assert refusal is not None and "\n" not in refusal
    assert "sagemaker-inference 1.10.2 is installed" in refusal
    assert "written for 1.10.1" in refusal
    missing = toolkit_patches.version_refusal({"sagemaker-inference": "1.10.1"}.get)
    assert missing is not None and "multi-model-server (not installed)" in missing


def test_serve_stops_before_anything_starts_on_another_version(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(toolkit_patches, "installed_version",
                        lambda dist: "2.0.0" if dist == "sagemaker-inference" else "1.1.11")
    assert serve.main(["--model-dir", "/nonexistent"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line == ("serve: sagemaker-inference 2.0.0 is installed, but "
                    "container_serve/toolkit_patches.py is written for 1.10.1")


def test_the_pins_match_pyproject_and_the_serving_lock() -> None:
    """One version per package: the constant, pyproject.toml's serve extra and serve.lock."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    lock = (ROOT / "docker/requirements/serve.lock").read_text()
    for dist, version in toolkit_patches.PINNED_VERSIONS.items():
        assert f'"{dist}=={version}"' in pyproject
        assert re.search(rf"^{re.escape(dist)}=={re.escape(version)} ", lock, re.M), dist


def test_the_handler_functions_are_ours_whatever_sagemaker_program_says(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "stray.py").write_text("def model_fn(d):\n    return 'stray'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("SAGEMAKER_PROGRAM", "stray.py")
    transformer = ServeTransformer()
    transformer._validate_user_module_and_set_functions()
    from container_serve import inference

    assert transformer._model_fn is inference.model_fn
    assert transformer._predict_fn is inference.predict_fn
    assert transformer._transform_fn is None
