"""The serving image as a SageMaker multi-model endpoint runs it: one container with
SAGEMAKER_MULTI_MODEL=true and the unpacked models under /opt/ml/models, driven through the
multi-model container contract (docs/serving-api.md, "Multi-model mode").

Three artifacts trained by the project's training code (tiny: 64 px, 1 epoch) on different
class subsets of the sample photos are loaded, invoked, checked against single-model serving
of the same artifact (the serving functions in this process: same labels, probabilities
within 1e-5), listed, described and unloaded; with the error answers: 409 (loaded twice),
404 (unknown, unloaded), 400 (not an artifact), 507 (beyond a memory budget set for the test,
where two models share a backbone and the third has its own).
One container; training the three artifacts is most of the time.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from job_contract.images import local_image
from tests.conftest import HELD_OUT, SAMPLE_DATA, run_training_subprocess
from tests.container.conftest import remove_containers, require_docker

SERVE_IMAGE = local_image("serve")
PREFIX = f"mme-pytest-{uuid.uuid4().hex[:8]}"  # container names of this session
SUBSETS = {"fish-monuments-others": ("fishes", "monuments", "others"),
           "renewable-tools": ("renewable", "tools"),
           "four-classes": ("fishes", "monuments", "renewable", "tools")}
# The training defaults (trainable-layers 0, seed 42) give the first two one backbone; another
# seed gives the third its own (docs/serving-api.md: a shared backbone counts once).
SEEDS = {"four-classes": "7"}
PHOTOS = HELD_OUT[::12]  # a few held-out photos of every class
RESIDENT_FACTOR = 2  # docs/serving-api.md: a model's estimate is 2 x its largest file x workers
TIMEOUT = 300  # a model loads in a worker at its first invocation (seconds on a busy machine)

pytestmark = pytest.mark.container


def _train(root: Path, classes: tuple[str, ...], seed: str | None) -> Path:
    data = root / "data"
    for split in ("train", "valid", "test"):
        for name in classes:
            shutil.copytree(SAMPLE_DATA / split / name, data / split / name)
    run = run_training_subprocess(root / "run", data, "--epochs", "1",
                                  *(("--seed", seed) if seed else ()))
    assert run.returncode == 0, run.log[-3000:]
    return run.model_dir


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """/opt/ml/models as SageMaker lays it out: <name>/model is an unpacked artifact."""
    require_docker(SERVE_IMAGE)
    root = tmp_path_factory.mktemp("multi-model")
    for name, classes in SUBSETS.items():
        shutil.copytree(_train(root / f"train-{name}", classes, SEEDS.get(name)),
                        root / "models" / name / "model")
    return root / "models"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Endpoint:
    def __init__(self, port: int) -> None:
        self.port = port

    def call(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body,
                                         headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def load(self, name: str, url: str) -> tuple[int, dict]:
        return self.call("POST", "/models", json.dumps({"model_name": name, "url": url}).encode(),
                         {"Content-Type": "application/json"})

    def invoke(self, name: str, photo: Path) -> tuple[int, dict]:
        return self.call("POST", f"/models/{urllib.parse.quote(name, safe='')}/invoke",
                         photo.read_bytes(), {"Content-Type": "image/jpeg",
                                              "X-Amzn-SageMaker-Target-Model": f"{name}.tar.gz"})


def _estimate(models: Path) -> int:
    model_dir = models / next(iter(SUBSETS)) / "model"
    return RESIDENT_FACTOR * max(p.stat().st_size for p in model_dir.iterdir())


@pytest.fixture(scope="module")
def endpoint(models: Path):
    """One multi-model container, one worker; room for 1.5 whole models (the 507 case)."""
    port, name = _free_port(), f"{PREFIX}-serve"
    budget = int(1.5 * _estimate(models))
    proc = subprocess.run([
        "docker", "run", "-d", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:8080",
        "-v", f"{models}:/opt/ml/models:ro", "-e", "SAGEMAKER_MULTI_MODEL=true",
        "-e", "SAGEMAKER_MODEL_SERVER_WORKERS=1", "-e", "SERVE_THREADS_PER_WORKER=1",
        "-e", f"SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS={TIMEOUT - 30}",
        "-e", f"SERVE_MODELS_MEMORY_BYTES={budget}", SERVE_IMAGE, "serve"],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    try:
        _wait_ping(port, name)
        yield Endpoint(port)
    finally:
        remove_containers(PREFIX)


def _wait_ping(port: int, name: str) -> None:
    deadline, last = time.monotonic() + 240, None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=10):
                return  # 200 (a 503 raises HTTPError)
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last = repr(exc)
        time.sleep(2)
    logs = subprocess.run(["docker", "logs", "--tail", "60", name], capture_output=True,
                          text=True)
    pytest.fail(f"/ping not 200 in 240 s with no model loaded: {last}\n{logs.stderr[-3000:]}")


def _single_model_answers(model_dir: Path) -> list[dict]:
    """What single-model serving answers for PHOTOS: the serving functions, frozen graph, one
    thread (what the container runs for an artifact without a compiled variant)."""
    from container_serve import inference
    from container_serve.settings import ServeSettings

    settings = ServeSettings(graph="frozen", threads_per_worker=1)
    served = inference.load_served(str(model_dir), settings)
    answers = []
    for photo in PHOTOS:
        images = inference.input_fn(photo.read_bytes(), "image/jpeg", settings)
        answer = inference.output_fn(inference.predict_fn(images, served), None, settings.top_k)
        answers.append(json.loads(answer))
    return answers


def _assert_same(got: dict, expected: dict) -> None:
    [got_top], [expected_top] = got["predictions"], expected["predictions"]
    assert [p["label"] for p in got_top["top_k"]] == [p["label"] for p in expected_top["top_k"]]
    for mine, theirs in zip(got_top["top_k"], expected_top["top_k"], strict=True):
        assert abs(mine["probability"] - theirs["probability"]) <= 1e-5, (mine, theirs)


def test_image_advertises_multi_models():
    require_docker(SERVE_IMAGE)
    labels = json.loads(subprocess.run(
        ["docker", "image", "inspect", "-f", "{{json .Config.Labels}}", SERVE_IMAGE],
        capture_output=True, text=True).stdout)
    assert labels.get("com.amazonaws.sagemaker.capabilities.multi-models") == "true"


def _check_against_single_model(endpoint: Endpoint, models: Path, name: str) -> None:
    for photo, reference in zip(PHOTOS, _single_model_answers(models / name / "model"),
                                strict=True):
        status, answer = endpoint.invoke(name, photo)
        assert status == 200, answer
        labels = {p["label"] for p in answer["predictions"][0]["top_k"]}
        assert labels == set(SUBSETS[name])  # top_k 5 >= classes: every class, its own
        _assert_same(answer, reference)


def test_models_load_answer_unload_within_the_memory_budget(endpoint: Endpoint, models: Path):
    """A and B share one backbone (trainable-layers 0, same seed), C has its own (another
    seed); the budget holds 1.5 whole models: A and B fit together, C only without them."""
    a, b, c = SUBSETS
    url = {name: f"/opt/ml/models/{name}/model" for name in SUBSETS}
    assert endpoint.call("GET", "/models") == (200, {"models": []})
    assert endpoint.load(a, url[a])[0] == 200
    assert endpoint.load(b, url[b])[0] == 200  # its head only: the backbone counts once
    status, body = endpoint.load(c, url[c])
    assert status == 507 and body["code"] == 507, body
    _check_against_single_model(endpoint, models, a)
    _check_against_single_model(endpoint, models, b)
    status, listed = endpoint.call("GET", "/models")
    assert status == 200 and listed == {"models": [
        {"modelName": a, "modelUrl": url[a]}, {"modelName": b, "modelUrl": url[b]}]}
    assert endpoint.call("GET", f"/models/{a}") == (200, {"modelName": a, "modelUrl": url[a]})
    assert endpoint.load(a, url[a])[0] == 409
    assert endpoint.call("DELETE", f"/models/{a}")[0] == 200
    assert endpoint.invoke(a, PHOTOS[0])[0] == 404
    assert endpoint.call("GET", f"/models/{a}")[0] == 404
    assert endpoint.call("DELETE", f"/models/{a}")[0] == 404
    assert endpoint.load(c, url[c])[0] == 507  # B still holds the shared backbone
    assert endpoint.call("DELETE", f"/models/{b}")[0] == 200
    assert endpoint.load(c, url[c])[0] == 200
    _check_against_single_model(endpoint, models, c)
    assert endpoint.invoke(b, PHOTOS[0])[0] == 404


def test_unknown_models_and_bad_artifacts(endpoint: Endpoint):
    assert endpoint.invoke("never-loaded", PHOTOS[0])[0] == 404
    status, body = endpoint.load("not-a-model", "/opt/ml/models")
    assert status == 400 and "manifest.json" in body["message"]
    status, body = endpoint.call("POST", "/invocations", PHOTOS[0].read_bytes(),
                                 {"Content-Type": "image/jpeg"})
    assert status == 400 and "/models/<name>/invoke" in body["message"]
