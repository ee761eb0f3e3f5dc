"""Where a SageMaker training job keeps its files inside the container.

One definition for the training code, which reads and writes these folders, and for the
drivers, which name them to SageMaker (``CheckpointConfig`` and ``TensorBoardOutputConfig``
LocalPath). In a job the root is /opt/ml; ``SAGEMAKER_BASE_DIR`` moves it for a run laid out
the same way elsewhere (tests, local_test/). :func:`base_dir` is the one place that reads the
variable. The LocalPath values the drivers send (:func:`in_job`) are paths in the job's
container, so they never follow it.

Torch-free: the drivers import it on a laptop.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

BASE_DIR_ENV = "SAGEMAKER_BASE_DIR"
JOB_BASE_DIR = PurePosixPath("/opt/ml")

# Relative to the base dir (the layout SageMaker gives every training job).
# (model/, output/data/ and input/data/ reach the code as SM_* variables.)
CHECKPOINTS = "checkpoints"  # synced with CheckpointConfig.S3Uri
OUTPUT = "output"  # the failure file goes here
TENSORBOARD = "output/tensorboard"  # TensorBoardOutputConfig's LocalPath, as the drivers set it
INPUT_CONFIG = "input/config"  # the JSON files SageMaker writes for the job

# Files SageMaker writes into INPUT_CONFIG when the job asks for them.
TENSORBOARD_CONFIG = "tensorboardoutputconfig.json"
DEBUG_HOOK_CONFIG = "debughookconfig.json"


def in_job(relative: str) -> str:
    """A path as the job's container sees it: ``in_job(CHECKPOINTS)`` is /opt/ml/checkpoints."""
    return str(JOB_BASE_DIR / relative)


# The LocalPath values the drivers send with CheckpointConfig and TensorBoardOutputConfig.
CHECKPOINT_LOCAL_PATH = in_job(CHECKPOINTS)
TENSORBOARD_LOCAL_PATH = in_job(TENSORBOARD)


def base_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The root of this job's folders: ``$SAGEMAKER_BASE_DIR``, else /opt/ml."""
    env = os.environ if environ is None else environ
    return Path(env.get(BASE_DIR_ENV, str(JOB_BASE_DIR)))


def local(relative: str, environ: Mapping[str, str] | None = None) -> Path:
    """A folder of the layout under this run's base dir: ``local(OUTPUT)``."""
    return base_dir(environ) / relative


def input_config(name: str, environ: Mapping[str, str] | None = None) -> Path:
    """A file SageMaker writes for the job: ``input_config(TENSORBOARD_CONFIG)``."""
    return local(INPUT_CONFIG, environ) / name
