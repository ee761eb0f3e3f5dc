"""Multi-model mode's management API (container_serve/management.py), answered by the serve
process without torch: SageMaker's contract for load (200, 409 loaded, 507 memory, 4xx bad
artifact), list (pagination), describe and unload (404 unknown), and the registry the workers
follow (container_serve/model_registry.py); the nginx routes that lead there (front.py)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from container_serve import front
from container_serve.management import ModelsApi
from container_serve.model_registry import Registry
from container_serve.settings import ServeSettings
from model_artifact.files import file_sha256
from model_artifact.manifest import Manifest
from model_artifact.preprocess import EvalPreprocessing

WEIGHTS_BYTES = 1 << 20
SETTINGS = ServeSettings(workers=2, multi_model=True, models_memory_bytes=1 << 40)


def artifact(folder: Path, classes: tuple[str, ...] = ("a", "b"), backbone: str = "") -> str:
    """An artifact as the serve process sees it: manifest + weights file (never unpickled);
    with ``backbone`` (a fingerprint), also a head-only file of 1 KiB."""
    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"w" * WEIGHTS_BYTES)
    head = {}
    if backbone:
        (folder / "head.pt").write_bytes(b"h" * 1024)
        head = {"backbone_sha256": backbone * 64, "head_file": "head.pt"}
    Manifest(architecture="resnet50", class_names=classes,
             preprocessing=EvalPreprocessing.for_image_size(32),
             weights_sha256=file_sha256(folder / "model.pt"), **head).write(folder)
    return str(folder)


def load(api: ModelsApi, name: str, url: str) -> tuple[int, dict]:
    code, body = api.answer("POST", "/models", json.dumps({"model_name": name, "url": url}
                                                          ).encode())
    return code, json.loads(body)


@pytest.fixture
def api(tmp_path: Path) -> ModelsApi:
    return ModelsApi(Registry(tmp_path / "runtime"), SETTINGS)


def test_load_describe_list_unload(api: ModelsApi, tmp_path: Path):
    url = artifact(tmp_path / "m1")
    assert load(api, "m1", url)[0] == 200
    code, body = api.answer("GET", "/models/m1", b"")
    assert (code, json.loads(body)) == (200, {"modelName": "m1", "modelUrl": url})
    code, body = api.answer("GET", "/models", b"")
    assert json.loads(body) == {"models": [{"modelName": "m1", "modelUrl": url}]}
    assert api.answer("DELETE", "/models/m1", b"")[0] == 200
    assert api.answer("GET", "/models/m1", b"")[0] == 404
    assert api.answer("DELETE", "/models/m1", b"")[0] == 404
    assert json.loads(api.answer("GET", "/models", b"")[1]) == {"models": []}


def test_loading_a_loaded_name_again_is_a_conflict(api: ModelsApi, tmp_path: Path):
    url = artifact(tmp_path / "m1")
    assert load(api, "m1", url)[0] == 200
    code, body = load(api, "m1", url)
    assert code == 409 and body["code"] == 409 and "already loaded" in body["message"]


def test_list_pages_with_next_page_token(api: ModelsApi, tmp_path: Path):
    url = artifact(tmp_path / "m")
    for name in ("c", "a", "b"):
        assert load(api, name, url)[0] == 200
    first = json.loads(api.answer("GET", "/models?limit=2", b"")[1])
    assert [m["modelName"] for m in first["models"]] == ["a", "b"]
    token = first["nextPageToken"]
    rest = json.loads(api.answer("GET", f"/models?limit=2&next_page_token={token}", b"")[1])
    assert [m["modelName"] for m in rest["models"]] == ["c"] and "nextPageToken" not in rest
    assert api.answer("GET", "/models?next_page_token=x", b"")[0] == 400


def test_names_are_opaque_and_percent_encoded_in_paths(api: ModelsApi, tmp_path: Path):
    url = artifact(tmp_path / "m")
    assert load(api, "customer a/model.tar.gz", url)[0] == 200
    code, body = api.answer("GET", "/models/customer%20a%2Fmodel.tar.gz", b"")
    assert code == 200 and json.loads(body)["modelName"] == "customer a/model.tar.gz"


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "manifest.json").unlink(), "manifest.json"),
    (lambda d: (d / "model.pt").write_bytes(b"x" * WEIGHTS_BYTES), "sha256"),
    (lambda d: (d / "manifest.json").write_text("{"), "not valid JSON"),
], ids=["no-manifest", "weights-changed", "bad-manifest"])
def test_a_bad_artifact_is_refused_with_its_reason_and_not_recorded(api, tmp_path, damage,
                                                                    message):
    url = artifact(tmp_path / "m")
    damage(Path(url))
    code, body = load(api, "m", url)
    assert code == 400 and message in body["message"], body
    assert api.registry.all() == []


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"model_name": "m"}',
                                  b'{"model_name": "", "url": "/x"}',
                                  b'{"model_name": "m", "url": "relative/dir"}'])
def test_a_malformed_load_request_is_a_400(api: ModelsApi, body: bytes):
    code, answer = api.answer("POST", "/models", body)
    assert code == 400 and json.loads(answer)["message"]


def test_a_model_beyond_the_memory_budget_is_refused_with_507(tmp_path: Path):
    # Each model is estimated at 2 (weights + graph) x 1 MiB x 2 workers = 4 MiB.
    api = ModelsApi(Registry(tmp_path / "runtime"),
                    dataclasses.replace(SETTINGS, models_memory_bytes=9 << 20))
    url = artifact(tmp_path / "m")
    assert load(api, "one", url)[0] == 200
    assert load(api, "two", url)[0] == 200
    code, body = load(api, "three", url)
    assert code == 507 and "three" in body["message"], body
    assert [r.model_name for r in api.registry.all()] == ["one", "two"]
    assert api.answer("DELETE", "/models/one", b"")[0] == 200  # SageMaker frees room, retries
    assert load(api, "three", url)[0] == 200


def test_models_on_one_backbone_count_it_once(tmp_path: Path):
    # Whole: 2 x 1 MiB x 2 workers = 4 MiB; a head on a resident backbone: 2 x 1 KiB x 2.
    api = ModelsApi(Registry(tmp_path / "runtime"),
                    dataclasses.replace(SETTINGS, models_memory_bytes=5 << 20))
    for name in ("one", "two", "three"):
        assert load(api, name, artifact(tmp_path / name, backbone="a"))[0] == 200
    assert load(api, "own-backbone", artifact(tmp_path / "own", backbone="b"))[0] == 507
    assert load(api, "fine-tuned", artifact(tmp_path / "whole"))[0] == 507
    api.answer("DELETE", "/models/one", b"")  # two and three still hold the backbone
    assert load(api, "fine-tuned", str(tmp_path / "whole"))[0] == 507


def test_with_int8_or_compiled_every_model_counts_whole(tmp_path: Path):
    for knob in ({"precision": "int8"}, {"graph": "compiled"}):
        api = ModelsApi(Registry(tmp_path / "runtime" / next(iter(knob.values()))),
                        dataclasses.replace(SETTINGS, models_memory_bytes=5 << 20, **knob))
        assert load(api, "one", artifact(tmp_path / f"{knob}-1", backbone="a"))[0] == 200
        assert load(api, "two", artifact(tmp_path / f"{knob}-2", backbone="a"))[0] == 507


def test_every_change_moves_the_generation_the_workers_watch(api: ModelsApi, tmp_path: Path):
    url = artifact(tmp_path / "m")
    seen = {api.registry.generation()}
    load(api, "m", url)
    seen.add(api.registry.generation())
    token = api.registry.lookup("m").token
    api.answer("DELETE", "/models/m", b"")
    seen.add(api.registry.generation())
    load(api, "m", url)
    assert len(seen | {api.registry.generation()}) == 4
    assert api.registry.lookup("m").token != token  # a reload is a new model for the workers


def test_other_methods_and_paths_are_refused(api: ModelsApi):
    assert api.answer("PUT", "/models", b"")[0] == 405
    assert api.answer("POST", "/models/m", b"")[0] == 405


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_nginx_accepts_the_multi_model_routes(tmp_path: Path):
    settings = dataclasses.replace(SETTINGS, port=8080)
    text = front.render_config(settings, str(tmp_path), 1 << 20)
    assert "location ~ ^/models/.+/invoke$" in text and "/invocations break" in text
    assert "models_api" not in front.render_config(ServeSettings(), str(tmp_path), 1 << 20)
    conf = tmp_path / "nginx.conf"
    conf.write_text(text.replace(front._user_line(), ""))
    test = subprocess.run(["nginx", "-t", "-q", "-p", str(tmp_path), "-e", "stderr", "-c",
                           str(conf)], capture_output=True, text=True)
    assert test.returncode == 0, test.stderr
