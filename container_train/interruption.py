"""SIGTERM (spot interruption, StopTrainingJob, ``docker stop``) without losing the epoch.

SageMaker sends SIGTERM and kills the container 120 s later. While the training loop runs, the
handler only raises a flag: the loop finishes the step in flight, writes a mid-epoch checkpoint
and the job exits with ``INTERRUPTED_EXIT_CODE``. Anywhere else (reading data, computing
features, writing the artifact) nothing would be saved by waiting, so the handler raises
:class:`Interrupted` at once and the job exits the same way; the restarted job resumes from the
last checkpoint.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger(__name__)
# 128 + SIGTERM, what a shell reports for a process SIGTERM ended: not a failure of the job
# (no failure file), and not success either (the toolkit must not mark the job complete).
INTERRUPTED_EXIT_CODE = 128 + signal.SIGTERM


class Interrupted(Exception):
    """The job was asked to stop; its progress is in the checkpoint directory."""


class StopSignal:
    """SIGTERM -> a flag the training loop reads between steps, or :class:`Interrupted`."""

    def __init__(self) -> None:
        self.received = False
        self._deferring = False

    @contextmanager
    def installed(self) -> Iterator[StopSignal]:
        """The SIGTERM handler for the duration of the job (the previous one restored)."""
        previous = signal.signal(signal.SIGTERM, self._handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received:
            return  # a second SIGTERM changes nothing: the checkpoint is being written
        self.received = True
        if not self._deferring:
            raise Interrupted("SIGTERM received")

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Inside, SIGTERM only sets the flag: the caller checks it between steps."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self.received:
            raise Interrupted("SIGTERM received")


NEVER = StopSignal()  # for callers (tests, local tuning) that install no handler
