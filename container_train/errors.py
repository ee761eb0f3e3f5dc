"""The one exception type whose message is written, as is, first in SageMaker's failure file."""

from __future__ import annotations


class TrainingError(Exception):
    """A problem the user can fix (data, hyperparameters, paths); the message says how."""
