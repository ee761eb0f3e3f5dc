"""One search space for both tuning paths: the SageMaker request (scripts/tune.py) and the
Optuna sampler (drivers/local_tuning.py) read the same ranges, flags and defaults."""

from __future__ import annotations

import pytest

from drivers import common, search_space
from drivers import local_tuning as tune_local
from drivers import tuning_job as tune
from drivers.search_space import DEFAULT_RANGES, Range, build_ranges
from job_contract.hyperparameters import SPECS_BY_NAME, parse_value


class RecordingTrial:
    """Answers Optuna's suggest_* calls with the low end / first choice and records them."""

    def __init__(self):
        self.calls: dict[str, tuple] = {}

    def suggest_float(self, name, low, high, *, log=False):
        self.calls[name] = ("float", low, high, log)
        return low

    def suggest_int(self, name, low, high, *, log=False):
        self.calls[name] = ("int", low, high, log)
        return low

    def suggest_categorical(self, name, choices):
        self.calls[name] = ("categorical", tuple(choices))
        return choices[-1]


def test_both_paths_use_the_same_definitions():
    # the very same functions and classes, so the same DEFAULT_RANGES dict
    assert tune.build_ranges is tune_local.build_ranges is search_space.build_ranges
    assert tune.parse_static is tune_local.parse_static is search_space.parse_static
    assert tune.Range is tune_local.Range is Range
    assert tune.BEST_FILE_FORMAT is tune_local.BEST_FILE_FORMAT is common.BEST_FILE_FORMAT
    assert common.BEST_FILE_FORMAT == "resnet-byoc/best-training-job@1"
    assert build_ranges.__globals__["DEFAULT_RANGES"] is DEFAULT_RANGES


def test_both_parsers_share_the_search_flags_and_defaults():
    sm = tune.build_parser().parse_args([])
    local = tune_local.build_parser().parse_args(["--data", "d"])
    for name in ("range", "static", "objective", "strategy", "early_stopping", "max_jobs",
                 "best_out"):
        assert getattr(sm, name) == getattr(local, name), name
    argv = ["--range", "lr=1e-4:1e-1:linear", "--range", "epochs=off", "--set", "epochs=5",
            "--objective", "valid:loss", "--strategy", "Random", "--max-jobs", "7"]
    sm = tune.build_parser().parse_args(argv)
    local = tune_local.build_parser().parse_args(["--data", "d", *argv])
    for name in ("range", "static", "objective", "strategy", "max_jobs"):
        assert getattr(sm, name) == getattr(local, name), name


def test_default_ranges_become_the_same_optuna_suggestions():
    ranges = build_ranges({}, {})
    assert list(ranges) == list(DEFAULT_RANGES)
    trial = RecordingTrial()
    values = {name: r.suggest(trial) for name, r in ranges.items()}
    assert trial.calls == {
        "lr": ("float", 1e-5, 1e-2, True),
        "batch-size": ("categorical", ("16", "32", "64")),
        "epochs": ("int", 3, 12, False),
        "trainable-layers": ("categorical", ("0", "2", "4", "all")),
        "weight-decay": ("float", 1e-6, 1e-2, True),
    }
    # typed by the image's parser, as the job would type them
    assert values == {"lr": 1e-5, "batch-size": 64, "epochs": 3, "trainable-layers": "all",
                      "weight-decay": 1e-6}
    for name, value in values.items():
        assert parse_value(name, value) == value


def test_overrides_and_static_values_shape_both_paths_alike():
    ranges = build_ranges({"lr": "1e-4:1e-1:linear", "epochs": "off"}, {"weight-decay": 0.0})
    assert set(ranges) == {"lr", "batch-size", "trainable-layers"}
    trial = RecordingTrial()
    ranges["lr"].suggest(trial)
    assert trial.calls["lr"] == ("float", 1e-4, 1e-1, False)


def test_real_optuna_samples_stay_inside_the_ranges():
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ranges = build_ranges({}, {})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen: dict[str, set] = {name: set() for name in ranges}
    for _ in range(40):
        trial = study.ask()
        for name, r in ranges.items():
            value = r.suggest(trial)
            assert parse_value(name, value) == value
            seen[name].add(value)
            spec = SPECS_BY_NAME[name]
            if r.kind != "Categorical":
                assert r.low <= value <= r.high
            else:
                assert str(value) in r.values and str(value) in (spec.choices or r.values)
        study.tell(trial, 0.5)
    assert seen["trainable-layers"] == {"0", "2", "4", "all"}
    assert seen["batch-size"] == {16, 32, 64}
    dist = study.trials[0].distributions
    assert dist["lr"] == optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)
    assert dist["epochs"] == optuna.distributions.IntDistribution(3, 12)


def test_enqueued_trials_are_checked_against_the_ranges():
    ranges = build_ranges({}, {})
    assert tune_local.enqueue_params("lr=0.001,batch-size=32,trainable-layers=all", ranges) == {
        "lr": 0.001, "batch-size": "32", "trainable-layers": "all"}
    with pytest.raises(tune_local.UsageError, match="outside the range"):
        tune_local.enqueue_params("lr=0.5", ranges)
    with pytest.raises(tune_local.UsageError, match="not one of"):
        tune_local.enqueue_params("batch-size=8", ranges)
    with pytest.raises(tune_local.UsageError, match="not a tuned hyperparameter"):
        tune_local.enqueue_params("momentum=0.5", ranges)


@pytest.mark.parametrize("extra, variants", [
    ([], (False, False)),                     # trials are compared, not served
    (["--serving-variants"], (True, False)),  # the image's defaults
    (["--set", "compile=true"], (True, False)),
    (["--set", "int8=true", "--serving-variants"], (True, True)),
])
def test_local_trials_skip_the_serving_variants_unless_asked(color_data, tmp_path, monkeypatch,
                                                             extra, variants):
    """What the training code is asked to do by `tune.py --local` (its boundary, as the
    CreateHyperParameterTuningJob request is the SageMaker path's): compile and int8 off
    unless asked. The trial stops once the config is seen."""
    import io

    pytest.importorskip("optuna")
    import container_train.main as training

    seen = []

    def setup(config, ctx=None):
        seen.append(config)
        raise RuntimeError("stopped after the config")

    monkeypatch.setattr(training, "setup", setup)
    err = io.StringIO()
    rc = tune_local.main(["--data", str(color_data), "--output", str(tmp_path / "out"),
                          "--best-out", str(tmp_path / "best.json"), "--max-jobs", "1",
                          "--set", "weights=none", *extra], err=err, out=io.StringIO())
    assert rc == common.EXIT_FAILED and "stopped after the config" in err.getvalue()
    [config] = seen
    assert (config.hyperparameters.compile, config.hyperparameters.int8) == variants
