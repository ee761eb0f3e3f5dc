"""SAGEMAKER_PROGRAM: the sagemaker-training toolkit runs this file with the hyperparameters
as ``--name value`` arguments. The project is pip-installed in the training image (and
editable in the dev venvs), so this file needs no path set-up."""

import sys

from container_train.main import main

if __name__ == "__main__":
    sys.exit(main())
