"""SageMaker Debugger through the real training image, run as SageMaker runs it.

`docker run IMAGE train` with /opt/ml/input/config/debughookconfig.json (the shape SageMaker
writes for a DebugHookConfig; LocalPath /opt/ml/output/tensors), then smdebug's create_trial
(inside the image, where smdebug is installed) reads the tensors back: the loss has TRAIN and
EVAL steps in the expected counts, weights and gradients the configured interval. A second run
without the config shows smdebug was never imported (step_summary.json records it).

Needs Docker and the image (TRAIN_IMAGE, default sagemaker-resnet50-train:latest); skipped with
the reason otherwise, unless CONTAINER_TESTS_REQUIRED=1 turns that into a failure.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from job_contract.images import local_image
from tests.container.conftest import remove_containers, require_docker

REPO = Path(__file__).resolve().parents[2]
LOCAL_TEST = REPO / "local_test"
SAMPLE_DATA = REPO / "sample_data" / "photos5"
TRAIN_IMAGE = local_image("train")
EPOCHS, BATCH, INTERVAL = 2, 16, 2
HPS = {"epochs": str(EPOCHS), "image-size": "64", "batch-size": str(BATCH),
       "weights": "none", "num-workers": "0", "log-interval": "2", "seed": "7"}
RUN_ID = uuid.uuid4().hex[:8]

pytestmark = [pytest.mark.container, pytest.mark.slow]

DEBUG_HOOK_CONFIG = {
    "LocalPath": "/opt/ml/output/tensors",
    "S3OutputPath": "s3://example-bucket/jobs/resnet50/debug-output",
    "HookParameters": {"save_interval": str(INTERVAL), "include_regex": "CrossEntropyLoss.*"},
    "CollectionConfigurations": [
        {"CollectionName": "losses", "CollectionParameters": {"save_interval": "1"}},
        {"CollectionName": "weights", "CollectionParameters": {"save_interval": str(INTERVAL)}},
        {"CollectionName": "gradients",
         "CollectionParameters": {"save_interval": str(INTERVAL)}},
    ],
}

# Runs inside the image: prints one JSON line with the steps per mode smdebug reads back.
READ_TRIAL = """
import json, sys
import smdebug.pytorch as smd
from smdebug.trials import create_trial
trial = create_trial("/opt/ml/output/tensors")
(loss,) = trial.tensor_names(collection="losses")
head = ("fc.weight", "Linear_weight")  # whole network, or the head alone over cached features
fc_w = next(n for n in trial.tensor_names(collection="weights") if n.endswith(head))
fc_g = next(n for n in trial.tensor_names(collection="gradients") if n.endswith(head))
out = {name: {mode: trial.tensor(t).steps(mode=getattr(smd.modes, mode))
              for mode in ("TRAIN", "EVAL")}
       for name, t in (("loss", loss), ("weight", fc_w), ("gradient", fc_g))}
print("TRIAL " + json.dumps(out))
"""


@pytest.fixture(scope="module", autouse=True)
def _docker_ready():
    require_docker(TRAIN_IMAGE)
    yield
    remove_containers(f"pytest-dbg-{RUN_ID}")


def _test_dir(root: Path, debug: bool) -> Path:
    test_dir = root / "test_dir"
    config = test_dir / "input" / "config"
    shutil.copytree(LOCAL_TEST / "test_dir" / "input" / "config", config)
    (config / "hyperparameters.json").write_text(json.dumps(HPS))
    if debug:
        (config / "debughookconfig.json").write_text(json.dumps(DEBUG_HOOK_CONFIG))
    for sub in ("model", "output", "checkpoints"):
        (test_dir / sub).mkdir(parents=True, exist_ok=True)
    return test_dir


def _docker(test_dir: Path, role: str, *args: str, entrypoint: str | None = None):
    mounts = []
    for sub in ("input", "model", "output", "checkpoints"):
        mounts += ["-v", f"{test_dir / sub}:/opt/ml/{sub}"]
    # The toolkit resolves the hosts of resourceconfig.json, also under --network none.
    cmd = ["docker", "run", "--rm", "--name", f"pytest-dbg-{RUN_ID}-{role}", "--hostname",
           "algo-1", "--add-host", "algo-1:127.0.0.1", "--network", "none", *mounts,
           "-v", f"{SAMPLE_DATA}:/opt/ml/input/data/training:ro"]
    if entrypoint:
        cmd += ["--entrypoint", entrypoint]
    proc = subprocess.run([*cmd, TRAIN_IMAGE, *args], capture_output=True, text=True,
                          timeout=600)
    return proc, proc.stdout + proc.stderr


def _steps(split: str) -> int:
    images = sum(1 for p in (SAMPLE_DATA / split).rglob("*") if p.suffix.lower() in
                 (".jpg", ".jpeg", ".png"))
    return math.ceil(images / BATCH)


def _summary(test_dir: Path) -> dict:
    return json.loads((test_dir / "output" / "data" / "step_summary.json").read_text())


def test_debug_hook_config_tensors_read_back_with_create_trial(tmp_path):
    test_dir = _test_dir(tmp_path, debug=True)
    proc, log = _docker(test_dir, "train", "train")
    assert proc.returncode == 0, log[-4000:]
    assert (test_dir / "output" / "tensors").is_dir(), log[-4000:]
    summary = _summary(test_dir)
    assert summary["debugger_configured"] is True and summary["smdebug_imported"] is True

    proc, log = _docker(test_dir, "trial", "-c", READ_TRIAL, entrypoint="python")
    assert proc.returncode == 0, log[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("TRIAL "))
    steps = json.loads(line[len("TRIAL "):])
    train, evals = EPOCHS * _steps("train"), EPOCHS * _steps("valid")
    assert steps["loss"] == {"TRAIN": list(range(train)), "EVAL": list(range(evals))}
    assert steps["weight"] == {"TRAIN": list(range(0, train, INTERVAL)),
                               "EVAL": list(range(0, evals, INTERVAL))}
    assert steps["gradient"] == {"TRAIN": list(range(0, train, INTERVAL)), "EVAL": []}


def test_without_debug_hook_config_smdebug_is_not_imported(tmp_path):
    test_dir = _test_dir(tmp_path, debug=False)
    proc, log = _docker(test_dir, "nodebug", "train")
    assert proc.returncode == 0, log[-4000:]
    summary = _summary(test_dir)
    assert summary["debugger_configured"] is False and summary["smdebug_imported"] is False
    assert not (test_dir / "output" / "tensors").exists()
    assert (test_dir / "output" / "data" / "report.html").is_file()
    # Outside the output data dir: TensorBoard scalars where SageMaker's TensorBoard config
    # uploads them.
    events = list((test_dir / "output" / "tensorboard").glob("events.out.tfevents.*"))
    assert events, ("no TensorBoard event file: is tensorboard (and its dependencies) in the "
                    "image's lock file? " + log[-2000:])
