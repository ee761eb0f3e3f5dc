"""torch's deprecation warnings, silenced where this package uses the deprecated APIs on
purpose (TorchScript, torch.export): they would repeat on every call. The int8 path
(model_artifact.quantize) uses none of them and silences nothing."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """TorchScript warns on every call that it is deprecated."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        yield
