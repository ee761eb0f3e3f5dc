"""Hyperparameters arrive as the sagemaker-training toolkit passes them: every quoting case."""

import dataclasses
import os
import pickle
from pathlib import Path

import pytest

from container_train.config import JobConfig, parse_config, split_argv
from container_train.errors import TrainingError
from job_contract.hyperparameters import (
    SPECS,
    HyperparameterError,
    Hyperparameters,
    canonical_name,
    parse_value,
)


@pytest.mark.parametrize(("name", "raw", "expected"), [
    ("lr", "0.01", 0.01),              # plain string from a generic estimator
    ("lr", '"0.01"', 0.01),            # JSON string decoded once: quotes survive
    ("lr", '"\\"0.01\\""'.replace("\\", ""), 0.01),  # double-encoded: ""0.01""
    ("lr", 0.01, 0.01),                # already typed (SM_HPS)
    ("lr", "1e-3", 0.001),
    ("batch-size", "32", 32),
    ("batch-size", '"32"', 32),
    ("batch-size", "32.0", 32),        # integer tuner ranges may print a float
    ("batch_size", "64", 64),          # underscore spelling
    ("--epochs", "3", 3),
    ("optimizer", '"SGD"', "sgd"),
    ("optimizer", "'adamw'", "adamw"),
    ("trainable-layers", "2", "2"),
    ("trainable-layers", 2, "2"),
    ("trainable-layers", "2.0", "2"),
    ("trainable-layers", '"all"', "all"),
    ("weights", '"none"', "none"),
    ("weights", "my-weights.pth", "my-weights.pth"),
    ("num-workers", "auto", "auto"),
    ("num-workers", '"4"', 4),
])
def test_toolkit_quoting_cases(name, raw, expected):
    value = parse_value(name, raw)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(("name", "raw", "fragment"), [
    ("lr", "fast", "hyperparameter 'lr' has invalid value 'fast': expected a number"),
    ("lr", "-1", "expected a value in range (valid: [1e-07, 10])"),
    ("lr", "nan", "expected a finite number"),
    ("batch-size", "32.5", "expected an integer"),
    ("optimizer", "adam", "expected one of the choices (valid: sgd, adamw)"),
    ("trainable-layers", "5", "valid: 0, 1, 2, 3, 4, all"),
    ("learning-rate", "0.1", "unknown hyperparameter 'learning-rate'; valid names: lr, batch-size"),
])
def test_malformed_values_name_the_parameter_and_choices(name, raw, fragment):
    with pytest.raises(HyperparameterError) as info:
        parse_value(name, raw)
    assert fragment in str(info.value)


def test_defaults_and_types_come_from_one_table():
    hp = Hyperparameters.from_mapping({})
    assert hp.to_dict() == {s.name: s.default for s in SPECS}
    assert hp.trainable_stages == 0
    assert Hyperparameters.from_mapping({"trainable-layers": "all"}).trainable_stages == 5


def test_the_typed_hyperparameters_are_the_table_rows():
    """One field per SPECS row, in table order, typed by the row's kind (docs/training.md)."""
    hp = Hyperparameters.from_mapping({"batch-size": "8", "early_stopping_patience": "3",
                                       "max-corrupt-fraction": "0.5", "num-workers": "auto"})
    assert list(hp.to_dict()) == [s.name for s in SPECS]
    assert len(dataclasses.fields(hp)) == len(SPECS)
    assert (hp.batch_size, hp.early_stopping_patience, hp.max_corrupt_fraction,
            hp.num_workers) == (8, 3, 0.5, "auto")
    kinds = {"float": float, "int": int, "bool": bool, "choice": str, "str": str}
    defaults = Hyperparameters.from_mapping({})
    for spec, value in zip(SPECS, defaults.to_dict().values(), strict=True):
        assert isinstance(value, kinds[spec.kind]) or (spec.allow_auto and value == "auto")
    with pytest.raises(dataclasses.FrozenInstanceError):
        hp.lr = 1.0  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(hp)) == hp  # DataLoader workers and torchrun may pickle it


@pytest.mark.parametrize(("spelling", "name"), [
    ("batch-size", "batch-size"), ("batch_size", "batch-size"), ("--Batch_Size", "batch-size"),
    ("--early_stopping-patience ", "early-stopping-patience"), ("model_dir", "model-dir"),
])
def test_every_spelling_of_a_name_is_the_table_name(spelling, name):
    assert canonical_name(spelling) == name


def test_toolkit_argv_splits_into_paths_and_hyperparameters():
    # What the toolkit ran in a real job: sorted names, decoded values.
    argv = ["--batch_size", "16", "--epochs", "1", "--image-size", "64",
            "--model-dir=/opt/ml/model", "--weights", "none"]
    paths, hps = split_argv(argv)
    assert paths == {"model-dir": "/opt/ml/model"}
    assert Hyperparameters.from_mapping(hps).batch_size == 16


def test_unknown_argument_lists_valid_names():
    with pytest.raises(TrainingError) as info:
        split_argv(["--lerning-rate", "0.1"])
    assert "unknown hyperparameter or argument 'lerning-rate'" in str(info.value)
    assert "lr, batch-size, epochs" in str(info.value)


@pytest.fixture
def no_job_env(monkeypatch):
    for name in [v for v in os.environ if v.startswith(("SM_", "SAGEMAKER_"))]:
        monkeypatch.delenv(name)


def _paths(data: Path, root: Path) -> tuple[list[str], dict[str, Path]]:
    """The same paths as command-line arguments and as JobConfig.from_values keywords."""
    argv = ["--data-dir", str(data), "--model-dir", str(root / "m"),
            "--output-data-dir", str(root / "o"), "--feature-cache-dir", str(root / "c")]
    return argv, {"data_dir": data, "model_dir": root / "m", "output_data_dir": root / "o",
                  "feature_cache_dir": root / "c"}


def test_typed_values_give_the_config_the_command_line_gives(no_job_env, sample_data, tmp_path):
    argv, paths = _paths(sample_data, tmp_path)
    typed = {"lr": 0.01, "batch_size": 16, "trainable-layers": 2, "compile": False,
             "num-workers": "auto"}
    from_argv = parse_config([*argv, "--lr", "0.01", "--batch-size", "16",
                              "--trainable-layers", "2", "--compile", "false",
                              "--num-workers", "auto"])
    assert JobConfig.from_values(typed, **paths) == from_argv
    assert from_argv.hyperparameters.trainable_layers == "2"
    assert from_argv.tensorboard_dir == tmp_path / "o" / "tensorboard"


@pytest.mark.parametrize(("name", "value", "error"), [
    ("lr", -1.0, HyperparameterError),
    ("optimizer", "adam", HyperparameterError),
    ("batch-size", 2.5, HyperparameterError),
    ("learning_rate", 0.1, TrainingError),
])
def test_typed_values_fail_as_the_command_line_does(no_job_env, sample_data, tmp_path, name,
                                                     value, error):
    """Same exception, same message; the value is quoted as it came (-1.0 typed, '-1.0' on a
    command line)."""
    argv, paths = _paths(sample_data, tmp_path)
    with pytest.raises(error) as from_argv:
        parse_config([*argv, f"--{name}", str(value)])
    with pytest.raises(error) as from_values:
        JobConfig.from_values({name: value}, **paths)
    assert str(from_values.value) == str(from_argv.value).replace(repr(str(value)), repr(value))
    assert f"'{name}'" in str(from_values.value)  # names the parameter
