"""Every replacement of a part of sagemaker-inference or multi-model-server, in one module.

The toolkit starts MMS and builds the handler with no hooks for what ``serve`` needs, so the
functions below replace some of its module attributes and one private method. Each says what
it replaces and why. They depend on the internals of the pinned versions, so ``serve`` calls
:func:`version_refusal` first and will not start with any other version installed: a toolkit
upgrade re-reads these patches, then moves the pin here, in pyproject.toml and in
docker/requirements/serve.lock together (tests/unit/test_serve_toolkit_patches.py checks).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from typing import Any

# The versions these patches are written for (distribution name -> version).
PINNED_VERSIONS = {"sagemaker-inference": "1.10.1", "multi-model-server": "1.1.11"}


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def version_refusal(installed: Callable[[str], str | None] | None = None) -> str | None:
    """One line saying which installed toolkit version differs from its pin, or None."""
    for distribution, pinned in PINNED_VERSIONS.items():
        found = (installed or installed_version)(distribution)
        if found != pinned:
            return (f"{distribution} {found or '(not installed)'} is installed, but "
                    f"container_serve/toolkit_patches.py is written for {pinned}")
    return None


def patch_model_server(mms_model_dir: str, config_file: str, find_mms: Callable[[], Any],
                       add_stop_handlers: Callable[[Any], None]) -> None:
    """Replace four parts of ``sagemaker_inference.model_server.start_model_server``:

    - ``environment.model_dir``, passed to MMS as ``--models model=DIR``: an empty directory.
      MMS 1.1.11 parses any file named manifest.json (any case, one level deep) in the model
      directory as its own legacy manifest and dies with a NullPointerException; the workers
      load the artifact from $SERVE_MODEL_DIR instead.
    - ``MMS_CONFIG_FILE``: the config file it writes, in serve's runtime dir, not /etc.
    - ``_retrieve_mms_server_process``: the toolkit's takes the only MMS on the machine and
      gives up if there are two (tests, other containers seen from the host); ``find_mms``
      finds *ours*.
    - ``_add_sigterm_handler``: ``add_stop_handlers`` also notes that the stop was asked for.
    - ``ENABLE_MULTI_MODEL`` (read from SAGEMAKER_MULTI_MODEL at import): off. In our
      multi-model mode MMS still serves one model, our handler (container_serve/management.py
      says why); the toolkit's would start MMS with no model and MMS's own /models API.
    """
    from sagemaker_inference import environment, model_server

    environment.model_dir = mms_model_dir
    model_server.MMS_CONFIG_FILE = config_file
    model_server._retrieve_mms_server_process = find_mms
    model_server._add_sigterm_handler = add_stop_handlers
    model_server.ENABLE_MULTI_MODEL = False


class OwnFunctionsOnly:
    """A mixin for a ``sagemaker_inference.transformer.Transformer`` subclass: its model, input,
    predict and output functions are always ``own_functions()``. The toolkit's private
    ``_validate_user_module_and_set_functions`` would import a module named by
    SAGEMAKER_PROGRAM and let a stray one replace them."""

    def own_functions(self) -> tuple[Callable[..., Any], ...]:
        """(model_fn, input_fn, predict_fn, output_fn)."""
        raise NotImplementedError

    def _validate_user_module_and_set_functions(self) -> None:
        self._model_fn, self._input_fn, self._predict_fn, self._output_fn = self.own_functions()
        self._transform_fn = None
        self._pre_model_fn = self._model_warmup_fn = None
