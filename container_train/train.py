"""SAGEMAKER_PROGRAM: the sagemaker-training toolkit runs this file with the hyperparameters
as ``--name value`` arguments. It works whether the project is pip-installed or this package
sits in /opt/ml/code next to its siblings."""

import sys
from pathlib import Path

try:
    from container_train.main import main
except ImportError:  # run as a plain script from a source tree
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from container_train.main import main

if __name__ == "__main__":
    sys.exit(main())
