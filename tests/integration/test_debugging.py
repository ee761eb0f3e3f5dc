"""Observability of real (tiny) training runs: the SageMaker Debugger hook from a
debughookconfig.json as SageMaker writes it, read back with smdebug's create_trial; no smdebug
import without one; our own step timings, TensorBoard scalars, torch.profiler trace and
report.html (opened in headless Chromium)."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from container_train import debugger
from container_train.config import default_tensorboard_dir, parse_config
from tests.chromium import render, require_chromium, screenshot
from tests.conftest import TINY_ARGS, training_env

# Prints whether smdebug was imported once training is over, whatever main() did.
MAIN_THEN_REPORT = (
    "import sys\n"
    "from container_train.main import main\n"
    "code = main(sys.argv[1:])\n"
    "print('SMDEBUG_IMPORTED=' + str('smdebug' in sys.modules), flush=True)\n"
    "sys.exit(code)\n"
)
EPOCHS, BATCH = 2, 8
TENSOR_INTERVAL = 3  # weights and gradients every 3rd step of each mode


def sagemaker_debug_hook_config(local_path: Path, *, interval: int = TENSOR_INTERVAL,
                                include_regex: str | None = None,
                                collections: tuple[str, ...] = ("losses", "weights", "gradients"),
                                ) -> dict:
    """What SageMaker writes to /opt/ml/input/config/debughookconfig.json for a
    DebugHookConfig: the API's shape, every parameter value a string."""
    hook_parameters = {"save_interval": str(interval)}
    if include_regex:
        hook_parameters["include_regex"] = include_regex
    return {
        "LocalPath": str(local_path),
        "S3OutputPath": "s3://example-bucket/jobs/resnet50/debug-output",
        "HookParameters": hook_parameters,
        "CollectionConfigurations": [
            {"CollectionName": name,
             "CollectionParameters": {"save_interval": "1" if name == "losses" else
                                      str(interval)}}
            for name in collections
        ],
    }


def _train(root: Path, data: Path, env_extra: dict[str, str], *extra: str):
    out = root / "output" / "data"
    env = training_env()
    env["SAGEMAKER_BASE_DIR"] = str(root / "opt_ml")  # no stray /opt/ml config is read
    env.update(env_extra)
    cmd = [sys.executable, "-c", MAIN_THEN_REPORT, "--data-dir", str(data),
           "--model-dir", str(root / "model"), "--output-data-dir", str(out), *TINY_ARGS,
           "--image-size", "32", "--batch-size", str(BATCH), "--epochs", str(EPOCHS), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return out, log


def _steps(data: Path, split: str) -> int:
    images = sum(1 for _ in (data / split).rglob("*.jpg"))
    return math.ceil(images / BATCH)


# --- SageMaker Debugger --------------------------------------------------------------------

@pytest.fixture(scope="module")
def debug_run(color_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("debug_run")
    config = root / "debughookconfig.json"
    tensors = root / "tensors"
    config.write_text(json.dumps(sagemaker_debug_hook_config(tensors)))
    out, log = _train(root, color_data, {"SMDEBUG_CONFIG_FILE_PATH": str(config)})
    return out, tensors, log


@pytest.mark.slow
def test_debugger_hook_saves_losses_per_mode_and_tensors_at_the_interval(debug_run, color_data):
    smd = pytest.importorskip("smdebug.pytorch")
    from smdebug.trials import create_trial

    out, tensors, log = debug_run
    assert "SMDEBUG_IMPORTED=True" in log
    trial = create_trial(str(tensors))
    train_steps = EPOCHS * _steps(color_data, "train")
    eval_steps = EPOCHS * _steps(color_data, "valid")  # the final test pass is not recorded

    (loss_name,) = trial.tensor_names(collection="losses")
    loss = trial.tensor(loss_name)
    assert loss.steps(mode=smd.modes.TRAIN) == list(range(train_steps))
    assert loss.steps(mode=smd.modes.EVAL) == list(range(eval_steps))
    # The saved losses are the ones the loop logged (first training step).
    rows = list(csv.DictReader((out / "step_times.csv").open()))
    first_train = next(r for r in rows if r["mode"] == "train")
    assert float(loss.value(0, mode=smd.modes.TRAIN)) == pytest.approx(
        float(first_train["loss"]), rel=1e-5)

    weights = trial.tensor_names(collection="weights")
    gradients = trial.tensor_names(collection="gradients")
    # The head's weight: "ResNet_fc.weight" when the whole network runs each step, or
    # "Linear_weight" when only the head does (frozen backbone over cached features).
    head = ("fc.weight", "Linear_weight")
    assert any(n.endswith(head) for n in weights), weights[:5]
    assert any(n.endswith(head) for n in gradients), gradients[:5]
    every = list(range(0, train_steps, TENSOR_INTERVAL))
    fc_weight = next(n for n in weights if n.endswith(head))
    fc_grad = next(n for n in gradients if n.endswith(head))
    assert trial.tensor(fc_weight).steps(mode=smd.modes.TRAIN) == every
    assert trial.tensor(fc_grad).steps(mode=smd.modes.TRAIN) == every
    assert trial.tensor(fc_weight).steps(mode=smd.modes.EVAL) == list(
        range(0, eval_steps, TENSOR_INTERVAL))
    assert trial.tensor(fc_grad).steps(mode=smd.modes.EVAL) == []  # no backward in eval

    summary = json.loads((out / "step_summary.json").read_text())
    assert summary["debugger_configured"] is True and summary["smdebug_imported"] is True


def _count_hooks(model, criterion) -> tuple[int, int, int]:
    layers = sum(len(m._forward_hooks) for m in model.modules())
    return layers, len(criterion._forward_hooks), sum(
        len(p._backward_hooks or {}) for p in model.parameters())


@pytest.mark.parametrize(("collections", "regex", "expected"), [
    (("losses",), None, (1, 1, 0)),                        # loss hook only
    (("losses", "weights", "gradients"), None, (1, 1, 4)),  # + one per parameter
    (("losses",), "CrossEntropyLoss.*", (7, 1, 4)),        # a regex may match any layer
    (("losses", "relus"), None, (7, 1, 4)),               # a custom collection: keep all
])
def test_hook_keeps_only_the_module_hooks_its_collections_need(tmp_path, collections, regex,
                                                               expected):
    smd = pytest.importorskip("smdebug.pytorch")
    import torch
    from smdebug.trials import create_trial
    from torch import nn

    from container_train.engine import eval_pass, train_one_epoch

    config = tmp_path / "debughookconfig.json"
    hook_config = sagemaker_debug_hook_config(tmp_path / "tensors", interval=1,
                                              include_regex=regex, collections=collections)
    for entry in hook_config["CollectionConfigurations"]:
        if entry["CollectionName"] == "relus":  # the ReLU layer's outputs
            entry["CollectionParameters"]["include_regex"] = "1_output"
    config.write_text(json.dumps(hook_config))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3))
    criterion = nn.CrossEntropyLoss()
    callback = debugger.DebuggerCallback(config)
    callback.on_train_begin(model, criterion)
    # The root always keeps its step hooks (a pre-hook and a profiling forward hook).
    assert _count_hooks(model, criterion) == expected
    data = torch.utils.data.TensorDataset(torch.randn(12, 3, 8, 8), torch.randint(0, 3, (12,)))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train_one_epoch(model, criterion, optimizer, loader, torch.device("cpu"), epoch=1,
                    epochs=1, log_interval=100, callbacks=[callback])
    eval_pass(model, criterion, loader, torch.device("cpu"), [callback])
    callback.on_train_end()
    assert _count_hooks(model, criterion) == (0, 0, 0)
    assert all(len(m._forward_pre_hooks) == 0 for m in model.modules())

    trial = create_trial(str(tmp_path / "tensors"))
    (loss,) = trial.tensor_names(collection="losses")
    assert trial.tensor(loss).steps(mode=smd.modes.TRAIN) == [0, 1, 2]
    assert trial.tensor(loss).steps(mode=smd.modes.EVAL) == [0, 1, 2]
    if "gradients" in collections:
        assert len(trial.tensor_names(collection="gradients")) == 4
        assert len(trial.tensor_names(collection="weights")) == 2
    if "relus" in collections:
        (relu,) = trial.tensor_names(collection="relus")
        assert trial.tensor(relu).steps(mode=smd.modes.TRAIN) == [0, 1, 2]


# --- no config: no smdebug; our own debug output ------------------------------------------

@pytest.fixture(scope="module")
def plain_run(color_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("plain_run")
    out, log = _train(root, color_data, {}, "--profile-steps", "2",
                      "--tensorboard-dir", str(root / "tensorboard"))
    return out, root / "tensorboard", log


@pytest.mark.slow
def test_without_a_config_smdebug_is_never_imported(plain_run):
    out, _, log = plain_run
    assert "SMDEBUG_IMPORTED=False" in log
    summary = json.loads((out / "step_summary.json").read_text())
    assert summary["debugger_configured"] is False and summary["smdebug_imported"] is False


@pytest.mark.slow
def test_step_times_split_data_and_compute_with_memory(plain_run, color_data):
    out, _, _ = plain_run
    rows = list(csv.DictReader((out / "step_times.csv").open()))
    train = [r for r in rows if r["mode"] == "train"]
    valid = [r for r in rows if r["mode"] == "eval"]
    assert len(train) == EPOCHS * _steps(color_data, "train")
    assert len(valid) == EPOCHS * _steps(color_data, "valid")
    assert {r["epoch"] for r in rows} == {str(e) for e in range(1, EPOCHS + 1)}
    for r in rows:
        assert float(r["data_seconds"]) >= 0 and float(r["compute_seconds"]) > 0
        assert float(r["images_per_sec"]) > 0 and float(r["rss_mb"]) > 50
    summary = json.loads((out / "step_summary.json").read_text())
    assert summary["batch_size"] == BATCH and summary["num_workers"] == 0
    assert 0 <= summary["modes"]["train"]["data_fraction"] < 1
    assert summary["memory"]["peak_rss_mb"] > 50


@pytest.mark.slow
def test_tensorboard_scalars(plain_run, color_data):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, tb_dir, _ = plain_run
    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/train", "loss/valid", "accuracy/train", "accuracy/valid", "step/loss",
            "step/data_seconds", "step/compute_seconds", "step/images_per_sec"} <= tags
    assert [e.step for e in acc.Scalars("loss/valid")] == list(range(1, EPOCHS + 1))
    assert len(acc.Scalars("step/loss")) == EPOCHS * _steps(color_data, "train")


@pytest.mark.slow
def test_profiler_trace_is_chrome_trace_json(plain_run):
    out, _, _ = plain_run
    (trace,) = (out / "profiler").glob("*.pt.trace.json")
    events = json.loads(trace.read_text())["traceEvents"]
    names = {e.get("name", "") for e in events}
    assert any(n.startswith("ProfilerStep#") for n in names)
    assert any(n.startswith("aten::") for n in names)


REPORT_IMAGES = 4  # curves, step time, reliability diagram (a run with a valid split), confusion


@pytest.mark.slow
def test_report_is_self_contained(plain_run):
    out, _, _ = plain_run
    page = (out / "report.html").read_text()
    sources = re.findall(r"""src=['"]([^'"]*)['"]""", page)
    # curves, step times, reliability diagram, confusion matrix: all embedded
    assert len(sources) == REPORT_IMAGES
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<link" not in page and "http://" not in page and "https://" not in page
    for section in ("findings", "metrics", "curves", "steps", "calibration", "confusion"):
        assert f'id="{section}"' in page
    assert json.loads((out / "findings.json").read_text()) is not None


# --- report.html in a real browser ---------------------------------------------------------

@pytest.mark.slow
def test_report_opens_in_headless_chromium_and_shows_its_images(plain_run, tmp_path):
    browser = require_chromium()
    out, _, _ = plain_run
    result = render(browser, out / "report.html", [], tmp_path)
    assert result["errors"] == []
    assert len(result["images"]) == REPORT_IMAGES, result
    assert all(i["ok"] and i["w"] > 100 and i["h"] > 100 for i in result["images"]), result
    # The rendered page is not blank: many distinct colours (plots, tables, text).
    from PIL import Image

    shot = tmp_path / "shot.png"
    screenshot(browser, out / "report.html", shot, size="1200,2400")
    with Image.open(shot) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50


# --- fast checks: where things go ----------------------------------------------------------

def test_tensorboard_dir_defaults(tmp_path, monkeypatch):
    out = tmp_path / "out"
    for var in ("SM_MODEL_DIR", "SAGEMAKER_BASE_DIR"):
        monkeypatch.delenv(var, raising=False)
    assert default_tensorboard_dir(out) == out / "tensorboard"
    monkeypatch.setenv("SM_MODEL_DIR", str(tmp_path / "model"))
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path / "opt_ml"))
    assert default_tensorboard_dir(out) == tmp_path / "opt_ml" / "output" / "tensorboard"
    config_dir = tmp_path / "opt_ml" / "input" / "config"
    config_dir.mkdir(parents=True)
    (config_dir / "tensorboardoutputconfig.json").write_text(json.dumps(
        {"LocalPath": "/opt/ml/output/tb-custom", "S3OutputPath": "s3://b/tb"}))
    assert default_tensorboard_dir(out) == Path("/opt/ml/output/tb-custom")


def test_tensorboard_dir_argument_wins(sample_data, tmp_path):
    config = parse_config(["--data-dir", str(sample_data), "--model-dir", str(tmp_path / "m"),
                           "--output-data-dir", str(tmp_path / "o"),
                           "--tensorboard-dir", str(tmp_path / "tb")])
    assert config.tensorboard_dir == tmp_path / "tb"
    assert config.hyperparameters.profile_steps == 0


def test_debug_hook_config_is_found_where_sagemaker_puts_it(tmp_path):
    base = tmp_path / "opt_ml"
    assert debugger.config_path({"SAGEMAKER_BASE_DIR": str(base)}) is None
    default = base / "input" / "config" / "debughookconfig.json"
    default.parent.mkdir(parents=True)
    default.write_text("{}")
    assert debugger.config_path({"SAGEMAKER_BASE_DIR": str(base)}) == default
    moved = tmp_path / "elsewhere.json"
    moved.write_text("{}")
    env = {"SAGEMAKER_BASE_DIR": str(base), "SMDEBUG_CONFIG_FILE_PATH": str(moved)}
    assert debugger.config_path(env) == moved
    assert debugger.config_path({**env, "SMDEBUG_CONFIG_FILE_PATH": str(tmp_path / "no")}) is None
    assert debugger.config_path({**env, "USE_SMDEBUG": "0"}) is None
    assert debugger.make_debugger_callback({"SAGEMAKER_BASE_DIR": str(tmp_path / "x")}) is None


def test_the_hook_config_of_these_tests_is_valid_for_smdebug(tmp_path):
    pytest.importorskip("smdebug")
    from smdebug.core.json_config import collect_hook_config_params, get_include_collections

    config = sagemaker_debug_hook_config(tmp_path / "tensors")
    params = collect_hook_config_params(config)
    assert params["out_dir"] == str(tmp_path / "tensors")
    assert get_include_collections(config) == ["losses", "weights", "gradients"]


def test_only_debugger_module_imports_smdebug():
    package = Path(debugger.__file__).parent
    importers = sorted(p.name for p in package.glob("*.py")
                       if re.search(r"^\s*(import|from)\s+smdebug", p.read_text(), re.M))
    assert importers == ["debugger.py"]
    assert os.path.basename(debugger.__file__) == "debugger.py"
