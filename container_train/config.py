"""Job configuration: command-line arguments + the SageMaker environment, resolved in one place.

Three ways in, one result (:class:`JobConfig`):

* under the sagemaker-training toolkit, hyperparameters arrive as ``--name value`` pairs and
  the paths come from ``SM_*`` variables (:func:`parse_config`);
* run directly, ``python -m container_train --data-dir D --model-dir M --output-data-dir O``
  (:func:`parse_config` too);
* in the caller's process (local tuning, benches, tests), typed values and paths
  (:meth:`JobConfig.from_values`), with the same checks, errors and defaults.

An explicit argument wins over the environment. Paths are documented in docs/training.md.
"""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from container_train.errors import TrainingError
from job_contract import sagemaker_paths
from job_contract.hyperparameters import (
    SPECS,
    SPECS_BY_NAME,
    Hyperparameters,
    canonical_name,
)

PATH_ARGS = ("data-dir", "model-dir", "output-data-dir", "checkpoint-dir", "pretrained-dir",
             "tensorboard-dir", "feature-cache-dir")
VALID_ALIASES = ("valid", "validation", "val")
PRETRAINED_CHANNEL = "pretrained"


@dataclass(frozen=True)
class JobConfig:
    hyperparameters: Hyperparameters
    splits: dict[str, Path]  # train and valid always; test when present
    model_dir: Path
    output_data_dir: Path
    checkpoint_dir: Path | None
    pretrained_dir: Path | None
    tensorboard_dir: Path | None = None  # TensorBoard scalars (see default_tensorboard_dir)
    feature_cache_dir: Path | None = None  # frozen-backbone features kept across jobs

    @classmethod
    def from_values(cls, values: Mapping[str, Any], *, data_dir: Path, model_dir: Path,
                    output_data_dir: Path, checkpoint_dir: Path | None = None,
                    pretrained_dir: Path | None = None, tensorboard_dir: Path | None = None,
                    feature_cache_dir: Path | None = None) -> JobConfig:
        """The config of an in-process run from typed (or raw) hyperparameter values: checked
        against the same table, with the same errors and defaults, as :func:`parse_config`."""
        for name in values:
            if canonical_name(name) not in SPECS_BY_NAME:
                raise _unknown_argument(name)
        paths = {"data-dir": data_dir, "model-dir": model_dir,
                 "output-data-dir": output_data_dir, "checkpoint-dir": checkpoint_dir,
                 "pretrained-dir": pretrained_dir, "tensorboard-dir": tensorboard_dir,
                 "feature-cache-dir": feature_cache_dir}
        return _resolve(Hyperparameters.from_mapping(values),
                        {name: str(path) for name, path in paths.items() if path is not None})


def failure_file_path() -> Path | None:
    """Where SageMaker reads the failure reason; None when not running as a SageMaker job."""
    if "SM_OUTPUT_DIR" in os.environ:
        return Path(os.environ["SM_OUTPUT_DIR"]) / "failure"
    output = sagemaker_paths.local(sagemaker_paths.OUTPUT)
    return output / "failure" if output.is_dir() else None


def default_tensorboard_dir(output_data_dir: Path) -> Path:
    """Under SageMaker the folder its TensorBoardOutputConfig uploads (LocalPath of
    input/config/tensorboardoutputconfig.json, else <base>/output/tensorboard); elsewhere
    <output-data-dir>/tensorboard."""
    if "SM_MODEL_DIR" not in os.environ:
        return output_data_dir / "tensorboard"
    config = sagemaker_paths.input_config(sagemaker_paths.TENSORBOARD_CONFIG)
    try:
        local = json.loads(config.read_text()).get("LocalPath")
    except (OSError, ValueError, AttributeError):
        local = None
    return Path(local) if local else sagemaker_paths.local(sagemaker_paths.TENSORBOARD)


def split_argv(argv: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """``--name value`` / ``--name=value`` pairs -> (path args, raw hyperparameters)."""
    paths: dict[str, str] = {}
    hps: dict[str, str] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("-"):
            raise TrainingError(f"unexpected argument {token!r}: arguments are --name value pairs")
        if "=" in token:
            name, value = token.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(argv):
                raise TrainingError(f"argument {token} has no value")
            name, value = token, argv[i + 1]
            i += 2
        key = canonical_name(name)
        if key in PATH_ARGS:
            paths[key] = value
        elif key in SPECS_BY_NAME:
            hps[key] = value
        else:
            raise _unknown_argument(name)
    return paths, hps


def _unknown_argument(name: str) -> TrainingError:
    return TrainingError(
        f"unknown hyperparameter or argument '{name.lstrip('-')}'; valid hyperparameters: "
        f"{', '.join(s.name for s in SPECS)}; paths: {', '.join(PATH_ARGS)}"
    )


def channels_from_env(environ: dict[str, str] | None = None) -> dict[str, Path]:
    environ = dict(os.environ if environ is None else environ)
    return {
        key[len("SM_CHANNEL_"):].lower(): Path(value)
        for key, value in environ.items()
        if key.startswith("SM_CHANNEL_")
    }


def _splits_in(root: Path) -> dict[str, Path]:
    found = {"train": root / "train", "test": root / "test"}
    for alias in VALID_ALIASES:
        if (root / alias).is_dir():
            found["valid"] = root / alias
            break
    return {k: v for k, v in found.items() if v.is_dir()}


def resolve_splits(data_dir: Path | None, channels: dict[str, Path]) -> dict[str, Path]:
    """Find train/valid/test: one folder (or channel) holding them, or one channel each."""
    data_channels = {k: v for k, v in channels.items() if k != PRETRAINED_CHANNEL}
    if data_dir is not None:
        where, splits = str(data_dir), _splits_in(data_dir)
    elif "train" in data_channels and not (data_channels["train"] / "train").is_dir():
        where = f"channels {sorted(data_channels)}"
        splits = {"train": data_channels["train"]}
        for alias in VALID_ALIASES:
            if alias in data_channels:
                splits["valid"] = data_channels[alias]
                break
        if "test" in data_channels:
            splits["test"] = data_channels["test"]
    elif len(data_channels) == 1 or "train" in data_channels:
        name = "train" if "train" in data_channels else next(iter(data_channels))
        where = f"channel '{name}' ({data_channels[name]})"
        splits = _splits_in(data_channels[name])
    elif not data_channels:
        raise TrainingError(
            "no training data: pass --data-dir, or give the job a channel holding "
            "train/ valid/ [test/] folders, or channels named train, valid [, test]"
        )
    else:
        raise TrainingError(
            f"cannot tell which channel holds the data among {sorted(data_channels)}: use one "
            "channel holding train/ valid/ [test/], or channels named train, valid [, test]"
        )
    for split in ("train", "valid"):
        if split not in splits:
            raise TrainingError(
                f"missing '{split}' split in {where}: expected a folder '{split}/' of class "
                f"folders (or a channel named '{split}')"
            )
    return splits


def _path_or_env(paths: dict[str, str], key: str, env: str) -> Path | None:
    value = paths.get(key) or os.environ.get(env)
    if value and value.startswith("s3://"):
        # SDK v2 framework estimators pass an S3 model_dir hyperparameter; the local one wins.
        value = os.environ.get(env)
    return Path(value) if value else None


def parse_config(argv: list[str]) -> JobConfig:
    """The config of a job from its command line (the toolkit's ``--name value`` pairs)."""
    paths, raw_hps = split_argv(argv)
    return _resolve(Hyperparameters.from_mapping(raw_hps), paths)


def _resolve(hyperparameters: Hyperparameters, paths: dict[str, str]) -> JobConfig:
    """Fill in the paths an argument did not give from the SageMaker environment."""
    data_dir = Path(paths["data-dir"]) if "data-dir" in paths else None
    channels = channels_from_env()
    splits = resolve_splits(data_dir, channels)
    model_dir = _path_or_env(paths, "model-dir", "SM_MODEL_DIR")
    output_data_dir = _path_or_env(paths, "output-data-dir", "SM_OUTPUT_DATA_DIR")
    if model_dir is None or output_data_dir is None:
        raise TrainingError("set --model-dir and --output-data-dir (or SM_MODEL_DIR and "
                            "SM_OUTPUT_DATA_DIR as SageMaker does)")
    checkpoint_dir = _path_or_env(paths, "checkpoint-dir", "SM_CHECKPOINT_DIR")
    if checkpoint_dir is None and "SM_MODEL_DIR" in os.environ:
        # SageMaker syncs this folder with CheckpointConfig.S3Uri (managed spot training).
        checkpoint_dir = sagemaker_paths.local(sagemaker_paths.CHECKPOINTS)
    pretrained_dir = _path_or_env(paths, "pretrained-dir", "SM_CHANNEL_PRETRAINED")
    tensorboard_dir = (Path(paths["tensorboard-dir"]) if "tensorboard-dir" in paths
                       else default_tensorboard_dir(output_data_dir))
    cache_dir = Path(paths["feature-cache-dir"]) if "feature-cache-dir" in paths else None
    return JobConfig(hyperparameters, splits, model_dir, output_data_dir, checkpoint_dir,
                     pretrained_dir, tensorboard_dir, cache_dir)


def describe(config: JobConfig) -> str:
    return json.dumps({
        "hyperparameters": config.hyperparameters.to_dict(),
        "splits": {k: str(v) for k, v in config.splits.items()},
        "model_dir": str(config.model_dir),
        "output_data_dir": str(config.output_data_dir),
        "checkpoint_dir": str(config.checkpoint_dir) if config.checkpoint_dir else None,
        "pretrained_dir": str(config.pretrained_dir) if config.pretrained_dir else None,
        "tensorboard_dir": str(config.tensorboard_dir) if config.tensorboard_dir else None,
    }, indent=None)


def usage() -> str:
    """``python -m container_train --help``: the arguments and the hyperparameter table."""
    lines = [
        "usage: python -m container_train --data-dir DIR --model-dir DIR --output-data-dir DIR",
        "           [--checkpoint-dir DIR] [--pretrained-dir DIR] [--tensorboard-dir DIR]",
        "           [--feature-cache-dir DIR] [--NAME VALUE ...]",
        "",
        "Trains the ResNet50 classifier as a SageMaker job does (docs/training.md). Under",
        "SageMaker the paths come from SM_* variables; an argument wins over them.",
        "",
        "hyperparameters (--NAME VALUE or --NAME=VALUE; '_' equals '-'):",
    ]
    for spec in SPECS:
        lines.append(f"  --{spec.name} ({spec.kind}, default {spec.default}; "
                     f"valid: {spec.describe_range()})")
        lines += textwrap.wrap(spec.help, width=92, initial_indent="      ",
                               subsequent_indent="      ")
    return "\n".join(lines)
