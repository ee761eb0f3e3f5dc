"""torch's deprecation warnings, silenced where this package uses the deprecated APIs on
purpose (TorchScript, torch.ao quantization, torch.export): they would repeat on every call."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """TorchScript and torch.ao.quantization warn on every call that they are deprecated."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        yield
