"""`tune.py --local`: a real Optuna search (4 trials, 2 epochs, 32 px, random-init backbone) on
the colour data set: best file, report, feature cache reuse, pruning, no SageMaker SDK; a
search killed after two trials and resumed from its SQLite study."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from drivers.common import BEST_FILE_FORMAT
from job_contract.metrics import OBJECTIVES
from tests.conftest import REPO

pytest.importorskip("optuna")
pytestmark = pytest.mark.slow

DRIVERS_PYTHON = REPO / ".venv-drivers" / "bin" / "python"
TRIALS = 4


@pytest.fixture(scope="module")
def search(color_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from drivers import tuning_job as tune

    root = tmp_path_factory.mktemp("tune_local")
    out, best = root / "out", root / "best.json"
    argv = ["--local", "--data", str(color_data), "--output", str(out), "--best-out", str(best),
            "--max-jobs", str(TRIALS), "--objective", "valid:loss", "--seed", "1",
            "--set", "trainable-layers=0", "--set", "weights=none", "--set", "image-size=32",
            "--set", "num-workers=0", "--set", "epochs=2",
            # pruning forced: after one completed trial, from epoch 1 on; trial 0 learns
            # (small lr), trial 1's lr makes the random-init features' logits explode
            "--prune-startup-trials", "1", "--prune-from-epoch", "1",
            "--enqueue", "lr=1e-5,batch-size=16", "--enqueue", "lr=0.01"]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = tune.main(argv)
    assert rc == 0, stderr.getvalue()[-3000:]
    return {"out": out, "best": best, "stdout": stdout.getvalue(), "stderr": stderr.getvalue(),
            "trials": json.loads((out / "trials.json").read_text())["trials"]}


def test_best_file_has_the_sagemaker_format_and_the_best_trial(search):
    best = json.loads(search["best"].read_text())
    assert best["format"] == BEST_FILE_FORMAT
    assert best["objective"]["metric"] == "valid:loss"
    assert best["objective"]["type"] == OBJECTIVES["valid:loss"] == "Minimize"
    completed = [t for t in search["trials"] if t["state"] == "complete"]
    assert completed
    assert best["objective"]["value"] == min(t["value"] for t in completed)
    number = min(completed, key=lambda t: t["value"])["number"]
    assert best["training_job_name"].endswith(f"-trial-{number:03d}")
    hps = best["hyperparameters"]
    assert best["tuned_hyperparameters"] == ["batch-size", "lr", "weight-decay"]
    assert isinstance(hps["batch-size"], int) and isinstance(hps["lr"], float)
    assert hps["epochs"] == 2 and hps["image-size"] == 32 and hps["trainable-layers"] == "0"
    assert best["final_metrics"]["valid:loss"] == best["objective"]["value"]
    # the objective is the one the artifact's manifest records (the kept weights)
    model_dir = Path(best["local"]["model_dir"])
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["metrics"]["valid_loss"] == pytest.approx(best["objective"]["value"])
    assert (model_dir / "model.pt").is_file()
    assert "best trial: " + best["training_job_name"] in search["stdout"]


@pytest.mark.skipif(not DRIVERS_PYTHON.exists(), reason="no drivers venv (.venv-drivers)")
def test_train_py_from_best_accepts_the_local_best_file(search, tmp_path):
    best = json.loads(search["best"].read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SAGEMAKER_"))}
    env.update(AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_EC2_METADATA_DISABLED="true",
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    proc = subprocess.run(
        [str(DRIVERS_PYTHON), str(REPO / "scripts" / "train.py"), "--dry-run",
         "--region", "eu-west-1", "--role", "arn:aws:iam::123456789012:role/SageMakerExecution",
         "--bucket", "my-ml-bucket", "--image-uri",
         "123456789012.dkr.ecr.eu-west-1.amazonaws.com/resnet-byoc-train:1",
         "--data", "s3://my-ml-bucket/photos", "--no-debugger", "--from-best",
         str(search["best"])],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    requests = json.loads(proc.stdout)
    create = [r["params"] for r in requests if r["operation"] == "CreateTrainingJob"]
    assert len(create) == 1
    # the trial's values, with the compiled variant the trials skipped (compile=false) back on
    assert best["hyperparameters"]["compile"] is False
    assert create[0]["HyperParameters"] == {
        **{k: str(v) for k, v in best["hyperparameters"].items()
           if k not in ("compile", "int8")},
        "compile": "true", "int8": "false"}


def test_report_and_csv_list_every_trial_and_the_best(search):
    """tuning_report.html (self-contained, Optuna's plots) and trials.csv replace objective.png:
    one row per trial with its state, tuned values and objective."""
    import csv

    assert not (search["out"] / "objective.png").exists()
    with (search["out"] / "trials.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert [int(r["number"]) for r in rows] == list(range(TRIALS))
    by_number = {t["number"]: t for t in search["trials"]}
    for row in rows:
        trial = by_number[int(row["number"])]
        assert row["state"] == {"complete": "Completed", "pruned": "Pruned"}[trial["state"]]
        assert float(row["lr"]) == trial["hyperparameters"]["lr"]
        if trial["state"] == "complete":
            assert float(row["valid:loss"]) == trial["value"]
    page = (search["out"] / "tuning_report.html").read_text()
    best = json.loads(search["best"].read_text())
    number = int(best["training_job_name"].rsplit("-", 1)[1])
    assert re.search(rf'<tr class="best"><td>{number}</td><td>trial-{number:03d}</td>'
                     r"<td>Completed</td>", page)
    sources = re.findall(r"""src=['"]([^'"]*)['"]""", page)
    assert len(sources) == 4 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in page and "https://" not in page and "<link" not in page
    assert "optuna-dashboard sqlite:///" in page


def test_later_trials_reuse_the_feature_cache(search):
    def computed(number: int) -> dict[str, int]:
        log = (search["out"] / f"trial-{number:03d}" / "train.log").read_text()
        return {m.group(1): int(m.group(2))
                for m in re.finditer(r"(\w+) features: (\d+) image-views computed", log)}

    assert computed(0) == {"train": 64, "valid": 12, "test": 12}  # 32 images x 2 views
    for number in range(1, TRIALS):
        assert computed(number) == {"train": 0, "valid": 0, "test": 0}, number
    assert (search["out"] / "feature-cache").is_dir()


def test_a_bad_trial_is_pruned_after_its_first_epoch(search):
    trials = {t["number"]: t for t in search["trials"]}
    assert len(trials) == TRIALS
    assert trials[0]["state"] == "complete"
    assert trials[0]["hyperparameters"]["lr"] == 1e-5
    assert trials[1]["hyperparameters"]["lr"] == 0.01
    assert trials[1]["state"] == "pruned"
    assert list(trials[1]["intermediate_values"]) == ["1"]  # stopped after epoch 1
    assert trials[1]["intermediate_values"]["1"] > trials[0]["intermediate_values"]["1"]
    assert not (search["out"] / "trial-001" / "model" / "model.pt").exists()
    # the table shows it
    assert re.search(r"^001\s+Pruned", search["stderr"], re.MULTILINE), search["stderr"]


def test_only_the_best_trial_keeps_its_weights(search):
    kept = sorted(p.parent.parent.name for p in search["out"].glob("trial-*/model/model.pt"))
    best = json.loads(search["best"].read_text())
    assert kept == [Path(best["local"]["trial_dir"]).name]


def test_trials_write_their_model_only_when_better_than_the_best_so_far(search):
    """A completed trial that does not beat the best so far skips writing model.pt (94 MB at
    224 px) instead of writing and deleting it."""
    best_so_far, decisions = None, []
    for trial in sorted(search["trials"], key=lambda t: t["number"]):
        if trial["state"] != "complete":
            continue
        log = (search["out"] / f"trial-{trial['number']:03d}" / "train.log").read_text()
        wrote = "model not written" not in log
        should = best_so_far is None or trial["value"] < best_so_far  # valid:loss: minimise
        decisions.append((trial["number"], wrote, should))
        if should:
            best_so_far = trial["value"]
    assert decisions and all(wrote == should for _, wrote, should in decisions), decisions


def test_figures_only_for_trials_that_were_best(search):
    """Plots and report.html cost most of a cached trial: only trials that were the best when
    they ended get them; every completed trial keeps its metrics JSON."""
    trials = json.loads((search["out"] / "trials.json").read_text())["trials"]
    running_best, expected = float("inf"), set()
    for t in sorted(trials, key=lambda t: t["number"]):
        if t["state"] == "complete" and t["value"] < running_best:  # valid:loss, minimised
            running_best = t["value"]
            expected.add(f"trial-{t['number']:03d}")
    completed = {p.parent.parent.name for p in search["out"].glob("trial-*/output/metrics.json")}
    assert len(completed) >= 2 and expected <= completed
    rendered = {p.parent.parent.name for p in search["out"].glob("trial-*/output/report.html")}
    assert rendered == expected
    assert {p.parent.parent.name for p in search["out"].glob("trial-*/output/curves.png")
            } == expected
    best = Path(json.loads(search["best"].read_text())["local"]["trial_dir"]).name
    assert best in rendered


def test_local_path_imports_no_sagemaker_sdk(search):
    assert not [m for m in sys.modules if m == "sagemaker" or m.startswith("sagemaker.")]


def test_local_path_refuses_bad_arguments_before_training(tmp_path, capsys):
    from drivers import tuning_job as tune

    assert tune.main(["--local", "--data", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert "missing 'train' split" in capsys.readouterr().err
    assert tune.main(["--local", "--data", str(tmp_path), "--range", "lr=0:1:log"]) == 2
    assert "lr" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# -- an interrupted search, resumed from its SQLite study ----------------------------------------

RESUME_ARGS = ["--objective", "valid:loss", "--seed", "3", "--early-stopping", "Off",
               "--set", "trainable-layers=0", "--set", "weights=none", "--set", "image-size=32",
               "--set", "num-workers=0", "--set", "epochs=1"]


def finished(db: Path) -> list:
    """The trials the study in db holds (read through Optuna, as optuna-dashboard would)."""
    import optuna

    storage = f"sqlite:///{db}"
    if not db.exists() or not optuna.get_all_study_names(storage):
        return []
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def test_a_killed_search_resumes_with_its_first_trials_kept(color_data, tmp_path):
    import signal
    import time

    import optuna

    out = tmp_path / "out"
    argv = ["--local", "--data", str(color_data), "--output", str(out), "--best-out",
            str(tmp_path / "best.json"), "--max-jobs", "4", *RESUME_ARGS]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = tmp_path / "stderr.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "tune.py"), *argv],
                                stdout=subprocess.DEVNULL, stderr=stderr, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 300
        # read the storage only once the driver has created the study in it
        while "study in sqlite:///" not in log.read_text() or sum(
                t.state.name == "COMPLETE" for t in finished(out / "study.db")) < 2:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)  # a crash: no handler runs, nothing is tidied up
    finally:
        proc.kill()
        proc.wait(timeout=60)
    before = {t.number: (t.params, t.value) for t in finished(out / "study.db")
              if t.state.name == "COMPLETE"}
    assert len(before) >= 2 and not (out / "trials.json").exists()
    (name,) = optuna.get_all_study_names(f"sqlite:///{out / 'study.db'}")

    from drivers import tuning_job as tune

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = tune.main([*argv, "--resume", name])
    assert rc == 0, err.getvalue()[-3000:]
    after = finished(out / "study.db")
    complete = {t.number: (t.params, t.value) for t in after if t.state.name == "COMPLETE"}
    assert len(complete) == 4  # the requested count, the killed trial (if any) run again
    assert {n: complete[n] for n in before} == before
    assert [t.state.name for t in after if t.number not in complete] in ([], ["FAIL"])
    record = json.loads((out / "trials.json").read_text())
    assert {t["number"] for t in record["trials"] if t["state"] == "complete"} == set(complete)
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["objective"]["value"] == min(v for _, v in complete.values())
    assert best["hyperparameters"]["image-size"] == 32


def test_resume_names_the_studies_it_can_continue(color_data, tmp_path, capsys):
    from drivers import tuning_job as tune

    argv = ["--local", "--data", str(color_data), "--output", str(tmp_path / "o"),
            "--resume", "local-hpo-nope"]
    assert tune.main(argv) == 2
    assert "--resume local-hpo-nope: no such study in sqlite:///" in capsys.readouterr().err
