"""The real images, run the way SageMaker runs them (`docker run IMAGE train|serve`).

Needs Docker and the images built by dev/setup_docker.sh (names from TRAIN_IMAGE/SERVE_IMAGE).
Without them every test here is skipped with the reason, unless CONTAINER_TESTS_REQUIRED=1
(dev/test.sh and CI set it), which turns the skip into a failure. Kept small: 64 px images,
1 epoch, random init (weights=none), the 138-image sample set. Every container started here
is removed, also when a test fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from job_contract.images import local_image
from tests.container.conftest import remove_containers, require_docker

REPO = Path(__file__).resolve().parents[2]
LOCAL_TEST = REPO / "local_test"
SAMPLE_DATA = REPO / "sample_data" / "photos5"
TRAIN_IMAGE = local_image("train")
SERVE_IMAGE = local_image("serve")
CLASSES = sorted(p.name for p in (SAMPLE_DATA / "train").iterdir() if p.is_dir())
TINY_HPS = {"epochs": "1", "image-size": "64", "batch-size": "16", "weights": "none",
            "num-workers": "0", "log-interval": "2", "seed": "7",
            "compile": "false"}  # 20-40 s each; the `trained` run below compiles
RUN_ID = uuid.uuid4().hex[:8]  # container names of this session, for cleanup

pytestmark = pytest.mark.container


@pytest.fixture(scope="module", autouse=True)
def _docker_ready():
    require_docker(TRAIN_IMAGE, SERVE_IMAGE)
    yield
    remove_containers(f"pytest-{RUN_ID}")  # belt and braces: nothing may outlive the session


def _name(role: str) -> str:
    return f"pytest-{RUN_ID}-{role}"


def _make_test_dir(root: Path, **hps: str) -> Path:
    """A copy of local_test/test_dir's config (as SageMaker writes it) with tiny settings."""
    test_dir = root / "test_dir"
    shutil.copytree(LOCAL_TEST / "test_dir" / "input" / "config", test_dir / "input" / "config")
    (test_dir / "input" / "config" / "hyperparameters.json").write_text(
        json.dumps({**TINY_HPS, **hps})
    )
    return test_dir


def _run(cmd: list[str], timeout: int = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def _train_local(test_dir: Path, *, args: str = "", role: str = "train"):
    env = {**os.environ, "TEST_DIR": str(test_dir), "TRAIN_IMAGE": TRAIN_IMAGE,
           "TRAIN_CONTAINER": _name(role), "DOCKER_RUN_ARGS": args}
    return _run([str(LOCAL_TEST / "train_local.sh")], env=env)


def _docker_train(test_dir: Path, *args: str, role: str, command: tuple[str, ...] = ()):
    """`docker run` of the training image on the sample data, with extra `docker run` args."""
    mounts = []
    for sub in ("input", "model", "output", "checkpoints"):  # not /opt/ml: it holds /opt/ml/code
        (test_dir / sub).mkdir(parents=True, exist_ok=True)
        mounts += ["-v", f"{test_dir / sub}:/opt/ml/{sub}"]
    return _run([
        "docker", "run", "--rm", "--name", _name(role), "--hostname", "algo-1",
        # The toolkit resolves the hosts of resourceconfig.json, also under --network none.
        "--add-host", "algo-1:127.0.0.1", *mounts,
        "-v", f"{SAMPLE_DATA}:/opt/ml/input/data/training:ro", *args, TRAIN_IMAGE, *command,
    ])


def _assert_artifact(test_dir: Path, log: str) -> None:
    model_dir = test_dir / "model"
    assert (model_dir / "model.pt").is_file(), log[-3000:]
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["class_names"] == CLASSES
    output = test_dir / "output"
    assert not (output / "failure").exists(), (output / "failure").read_text()
    metrics = json.loads((output / "data" / "metrics.json").read_text())
    assert metrics["final"] and metrics["history"]
    for name in ("per_class_accuracy.json", "confusion_matrix.json", "confusion_matrix.png"):
        assert (output / "data" / name).is_file(), name


# --- training ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """local_test/train_local.sh: `docker run IMAGE train`, test_dir as /opt/ml."""
    test_dir = _make_test_dir(tmp_path_factory.mktemp("train"), compile="true")
    proc = _train_local(test_dir)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return test_dir


def test_train_writes_artifact_and_output_files(trained):
    _assert_artifact(trained, "")
    # The toolkit ran our program with the JSON-decoded hyperparameters.
    manifest = json.loads((trained / "model" / "manifest.json").read_text())
    assert manifest["architecture"] == "resnet50"


def test_train_compiles_the_served_model_with_the_images_compiler(trained):
    variant = json.loads((trained / "model" / "manifest.json").read_text())["variants"]["compiled"]
    assert variant["format"] == "aotinductor-x86-64-v3-batch1" and variant["torch"]
    assert variant["top1_agreement"] == 1.0 and variant["max_logit_difference"] < 1e-3
    assert variant["threads"] == 1
    assert (trained / "model" / variant["file"]).stat().st_size > 50_000_000  # weights inside


def test_train_runs_without_argument_and_without_network(tmp_path):
    """SDK v3 local mode passes no `train`; SageMaker network isolation is `--network none`."""
    test_dir = _make_test_dir(tmp_path)
    proc = _docker_train(test_dir, "--network", "none", role="noarg")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    _assert_artifact(test_dir, log)


def _weights_baked() -> bool:
    proc = _run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "sh", TRAIN_IMAGE,
                 "-c", 'ls "$TORCH_HOME"/hub/checkpoints/resnet50-*.pth'])
    return proc.returncode == 0


def test_imagenet_weights_under_network_isolation(tmp_path):
    """Baked weights: weights=imagenet trains with --network none. Not baked (CI here): the job
    fails fast and says why in /opt/ml/output/failure, as SageMaker shows FailureReason."""
    test_dir = _make_test_dir(tmp_path, weights="imagenet")
    proc = _docker_train(test_dir, "--network", "none", role="imagenet", command=("train",))
    log = proc.stdout + proc.stderr
    if _weights_baked():
        assert proc.returncode == 0, log[-4000:]
        _assert_artifact(test_dir, log)
    else:
        assert proc.returncode != 0, log[-4000:]
        failure = (test_dir / "output" / "failure").read_text()
        assert "imagenet" in failure.lower() and "weights" in failure.lower(), failure
        assert not (test_dir / "model" / "model.pt").exists()


def test_bad_hyperparameter_fails_with_reason(tmp_path):
    test_dir = _make_test_dir(tmp_path, **{"image-size": "not-a-number"})
    proc = _docker_train(test_dir, "--network", "none", role="badhp", command=("train",))
    assert proc.returncode != 0
    failure = (test_dir / "output" / "failure").read_text()
    assert "image-size" in failure, failure


def test_smdebug_imports_and_writes_a_tensor():
    probe = Path(__file__).with_name("smdebug_probe.py")
    proc = _run(["docker", "run", "--rm", "--name", _name("smdebug"), "--network", "none",
                 "-v", f"{probe}:/tmp/smdebug_probe.py:ro", TRAIN_IMAGE,
                 "python", "/tmp/smdebug_probe.py"])
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "SMDEBUG_OK 3" in proc.stdout, log[-4000:]


# --- serving -------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(port: int, path: str, data: bytes | None = None, headers: dict | None = None,
             timeout: float = 60) -> tuple[int, bytes]:
    method = "POST" if data is not None else "GET"
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                 headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _a_jpeg() -> Path:
    return sorted((SAMPLE_DATA / "test").rglob("*.jpg"))[0]


@pytest.fixture(scope="module")
def server(trained):
    """local_test/serve_local.sh (DETACH=1): `docker run -p PORT:8080 IMAGE serve`."""
    port, name = _free_port(), _name("serve")
    env = {**os.environ, "PORT": str(port), "MODEL_DIR": str(trained / "model"),
           "SERVE_IMAGE": SERVE_IMAGE, "SERVE_CONTAINER": name, "DETACH": "1",
           # One thread: what the compiled variant is built for (the default layout is one
           # worker per CPU with one thread each; one worker alone would take every CPU).
           "DOCKER_RUN_ARGS": "-e SAGEMAKER_MODEL_SERVER_WORKERS=1 -e SERVE_THREADS_PER_WORKER=1"}
    proc = _run([str(LOCAL_TEST / "serve_local.sh")], env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    try:
        # Wait for a real classification (it proves more than /ping's 200).
        jpeg = _a_jpeg().read_bytes()
        deadline, last = time.monotonic() + 240, None
        while time.monotonic() < deadline:
            try:
                last = _request(port, "/invocations", jpeg, {"Content-Type": "image/jpeg"}, 30)
                if last[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                last = (None, repr(exc).encode())
            time.sleep(2)
        else:
            logs = _run(["docker", "logs", "--tail", "60", name])
            pytest.fail(f"server not ready in 240 s: {last}\n{logs.stdout}{logs.stderr}")
        yield port
    finally:
        _run(["docker", "rm", "-f", name], timeout=60)


def test_serve_runs_the_compiled_graph_from_a_read_only_model_dir(server):
    logs = _run(["docker", "logs", _name("serve")])
    # compiled-bf16 where this CPU has AMX and training kept that package
    assert re.search(r"serving /opt/ml/model: compiled(-bf16)? graph", logs.stdout + logs.stderr
                     ), logs.stdout[-3000:]


def test_serve_local_publishes_on_loopback_only(server):
    """serve_local.sh must not expose an unauthenticated model server to the network."""
    published = _run(["docker", "port", _name("serve"), "8080/tcp"]).stdout.split()
    assert published == [f"127.0.0.1:{server}"]


_PROCESSES = """
import json, psutil
rows = [p.info for p in psutil.process_iter(["pid", "ppid", "username", "cmdline"])]
# Listening TCP sockets of the container's network namespace (state 0A), from /proc/net: a
# process's own sockets would need ptrace rights over processes of another user.
ports = sorted({int(line.split()[1].rsplit(":", 1)[1], 16)
                for name in ("/proc/net/tcp", "/proc/net/tcp6")
                for line in open(name).read().splitlines()[1:] if line.split()[3] == "0A"})
print(json.dumps({"processes": rows, "listening": ports}))
"""


def test_serve_processes_run_unprivileged_and_only_nginx_listens(server):
    """serve starts as root (SageMaker runs containers as root) and gives it up before anything
    reads the artifact or a request: nginx (master and workers), MMS (java) and its Python
    workers run as model-server. Only nginx listens on TCP (MMS's management API: Unix socket)."""
    proc = _run(["docker", "exec", _name("serve"), "python", "-c", _PROCESSES], timeout=60)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    rows = [r for r in found["processes"] if "psutil" not in " ".join(r["cmdline"] or [])]
    kinds = {"nginx": [], "java": [], "worker": [], "serve": []}
    for row in rows:
        line = " ".join(row["cmdline"] or [])
        kind = ("nginx" if line.startswith("nginx") else "java" if "ModelServer" in line
                else "worker" if "model_service_worker" in line
                else "serve" if row["pid"] == 1 else None)
        if kind:
            kinds[kind].append(row)
    assert all(kinds.values()), kinds
    owners = {kind: {r["username"] for r in procs} for kind, procs in kinds.items()}
    assert owners == {kind: {"model-server"} for kind in kinds}, owners
    logs = _run(["docker", "logs", _name("serve")])
    assert "serve: running as model-server" in logs.stdout + logs.stderr
    assert found["listening"] == [8080], found["listening"]  # nginx's; MMS: Unix sockets


def test_serve_answers_ping(server):
    status, _ = _request(server, "/ping")
    assert status == 200


def test_serve_classifies_a_jpeg_with_the_trained_model(server):
    status, body = _request(server, "/invocations", _a_jpeg().read_bytes(),
                            {"Content-Type": "image/jpeg", "Accept": "application/json"})
    assert status == 200, body
    (prediction,) = json.loads(body)["predictions"]
    top = prediction["top_k"]
    assert top and {p["label"] for p in top} <= set(CLASSES)
    probabilities = [p["probability"] for p in top]
    assert probabilities == sorted(probabilities, reverse=True)
    assert 0 < sum(probabilities) <= 1 + 1e-5


def test_predict_sh_prints_top_k(server):
    env = {**os.environ, "PORT": str(server), "TOP_K": "2"}
    proc = _run([str(LOCAL_TEST / "predict.sh"), str(_a_jpeg())], env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    top = json.loads(proc.stdout)["predictions"][0]["top_k"]
    assert len(top) == 2 and {p["label"] for p in top} <= set(CLASSES)


@pytest.mark.parametrize(
    ("body", "headers", "expected"),
    [
        (b"this is not an image", {"Content-Type": "image/jpeg"}, 400),
        (b"", {"Content-Type": "image/jpeg"}, 400),
        (b"a,b,c", {"Content-Type": "text/plain"}, 415),
        (None, {"Content-Type": "image/jpeg", "Accept": "text/csv"}, 406),
    ],
    ids=["not-an-image", "empty-body", "unsupported-content-type", "unacceptable-accept"],
)
def test_serve_rejects_bad_requests_with_4xx(server, body, headers, expected):
    data = _a_jpeg().read_bytes() if body is None else body
    status, answer = _request(server, "/invocations", data, headers)
    assert status == expected, answer[:500]
    error = json.loads(answer)
    assert error["code"] == expected and error["message"]


def test_predict_sh_fails_on_an_http_error(server, tmp_path):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not a jpeg")
    env = {**os.environ, "PORT": str(server)}
    proc = _run([str(LOCAL_TEST / "predict.sh"), str(junk)], env=env, timeout=120)
    assert proc.returncode != 0 and "HTTP 400" in proc.stderr


def test_serve_honours_sagemaker_bind_to_port(trained):
    """The image's label says accept-bind-to-port: SAGEMAKER_BIND_TO_PORT moves the listener."""
    labels = json.loads(_run(["docker", "image", "inspect", "-f", "{{json .Config.Labels}}",
                              SERVE_IMAGE]).stdout)
    assert labels.get("com.amazonaws.sagemaker.capabilities.accept-bind-to-port") == "true"
    port, name = _free_port(), _name("bindport")
    proc = _run(["docker", "run", "-d", "--rm", "--name", name, "-p", f"{port}:9123",
                 "-e", "SAGEMAKER_BIND_TO_PORT=9123", "-e", "SAGEMAKER_MODEL_SERVER_WORKERS=1",
                 "-v", f"{trained / 'model'}:/opt/ml/model", SERVE_IMAGE, "serve"])
    assert proc.returncode == 0, proc.stderr
    try:
        deadline, last = time.monotonic() + 180, None
        while time.monotonic() < deadline:
            try:
                last = _request(port, "/ping", timeout=10)
                if last[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                last = (None, repr(exc))
            time.sleep(2)
        assert last and last[0] == 200, last
    finally:
        _run(["docker", "rm", "-f", name], timeout=60)
