"""PID 1 of the training image: the sagemaker-training toolkit's ``train``, SIGTERM passed on.

The toolkit (4.9.0) installs no SIGTERM handler and runs the training script as a child
process. A container's PID 1 without a handler never receives SIGTERM (the kernel drops it),
so ``docker stop``, StopTrainingJob and spot interruptions would not reach the script, which
SageMaker then kills mid-epoch 120 s later. This process runs the toolkit in-process, forwards
SIGTERM to its children (the script checkpoints and exits, see interruption.py) and then exits
with 128 + SIGTERM, as the shell reports a process that SIGTERM ended.

``docker run IMAGE train`` and ``docker run IMAGE`` (CMD train) run the toolkit; any other
command is executed as given.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from types import FrameType

import psutil  # a dependency of sagemaker-training

from container_train.interruption import INTERRUPTED_EXIT_CODE


class _Forwarder:
    def __init__(self) -> None:
        self.received = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.received = True
        # Not the toolkit's own helpers (the intermediate-output S3 sync runs until the
        # script has exited): only the processes it started with Popen, i.e. the script.
        helpers = {p.pid for p in multiprocessing.active_children()}
        for child in psutil.Process().children():
            if child.pid in helpers:
                continue
            try:
                child.send_signal(signum)
            except psutil.NoSuchProcess:
                pass


def main(argv: list[str]) -> int:
    if argv and argv != ["train"]:
        os.execvp(argv[0], argv)
    forwarder = _Forwarder()
    signal.signal(signal.SIGTERM, forwarder)
    from sagemaker_training import trainer

    try:
        trainer.train()  # ends with sys.exit
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return INTERRUPTED_EXIT_CODE if forwarder.received else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
