"""SageMaker Debugger (smdebug), behind one small module: the only one that imports smdebug.

When a job is started with a ``DebugHookConfig``, SageMaker writes
``/opt/ml/input/config/debughookconfig.json`` (``SMDEBUG_CONFIG_FILE_PATH`` moves it)::

    {"LocalPath": "/opt/ml/output/tensors", "S3OutputPath": "s3://...",
     "HookParameters": {"save_interval": "100"},
     "CollectionConfigurations": [{"CollectionName": "losses",
                                   "CollectionParameters": {"save_interval": "10"}}]}

Then :func:`make_debugger_callback` builds the smdebug hook from that file, registers the model
and the loss, and switches the hook between TRAIN and EVAL with the loop, so SageMaker's rules
and ``smdebug.trials.create_trial`` see both. Without a config (or with ``USE_SMDEBUG=0``)
smdebug is never imported: no cost, and the code runs where smdebug is absent.

smdebug 1.0.34 is the last release (2023); its framework profiling does not know torch >= 1.9,
so only tensors are collected here. Our own timings and traces live in profiling.py.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from torch import nn

from container_train.engine import Callback
from container_train.errors import TrainingError
from job_contract import sagemaker_paths

log = logging.getLogger(__name__)

CONFIG_ENV = "SMDEBUG_CONFIG_FILE_PATH"
CONFIG_NAME = sagemaker_paths.DEBUG_HOOK_CONFIG
DISABLE_ENV = "USE_SMDEBUG"  # smdebug's own switch: 0/false turns the hook off
# Collections saved without per-layer forward hooks (see DebuggerCallback._needs).
LAYERLESS_COLLECTIONS = frozenset({"losses", "weights", "biases", "gradients"})


def config_path(environ: dict[str, str] | None = None) -> Path | None:
    """The debug hook config of this job, or None when Debugger was not asked for."""
    env = os.environ if environ is None else environ
    if env.get(DISABLE_ENV, "").strip().lower() in ("0", "false", "no"):
        return None
    explicit = env.get(CONFIG_ENV)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            log.warning("%s=%s does not exist: SageMaker Debugger stays off", CONFIG_ENV, path)
            return None
        return path
    path = sagemaker_paths.input_config(CONFIG_NAME, env)
    return path if path.is_file() else None


def smdebug_imported() -> bool:
    return "smdebug" in sys.modules


_MODULE_HOOK_DICTS = ("_forward_pre_hooks", "_forward_hooks")
_MODULE_HOOK_EXTRAS = ("_forward_pre_hooks_with_kwargs", "_forward_hooks_with_kwargs",
                       "_forward_hooks_always_called")


def _hook_owners(model: nn.Module, criterion: nn.Module) -> list[tuple[Any, str]]:
    owners: list[tuple[Any, str]] = [(m, attr) for m in [*model.modules(), criterion]
                                     for attr in _MODULE_HOOK_DICTS]
    owners += [(p, "_backward_hooks") for p in model.parameters()]
    return owners


def _hook_keys(owners: list[tuple[Any, str]]) -> list[set[int]]:
    return [set(getattr(obj, attr) or {}) for obj, attr in owners]


class DebuggerCallback(Callback):
    """Drives an smdebug hook from the training loop's events."""

    def __init__(self, path: Path):
        try:
            import smdebug.pytorch as smd
        except ImportError as exc:
            raise TrainingError(
                f"a SageMaker Debugger hook config is present ({path}) but smdebug cannot be "
                f"imported ({exc}): use the training image, or install the 'debug' extra"
            ) from None
        self.path = path
        self.hook = smd.Hook.create_from_json_file(json_file_path=str(path))
        self.out_dir = getattr(self.hook, "out_dir", None)
        self._modes = {"train": smd.modes.TRAIN, "eval": smd.modes.EVAL}
        self._added: list[tuple[Any, str, set[int]]] = []
        log.info("SageMaker Debugger: hook from %s writes tensors to %s", path, self.out_dir)

    def on_train_begin(self, model: nn.Module, criterion: nn.Module) -> None:
        owners = _hook_owners(model, criterion)
        before = _hook_keys(owners)
        self.hook.register_module(model)
        self.hook.register_loss(criterion)
        self._added = [(obj, attr, after - old) for (obj, attr), old, after
                       in zip(owners, before, _hook_keys(owners), strict=True) if after - old]
        self._prune(criterion)

    def _needs(self) -> tuple[bool, bool]:
        """(layer hooks, gradient hooks) the configured collections need.

        smdebug hooks every layer's forward pass and every parameter's gradient, and with the
        losses saved at every step each layer hook then inspects every tensor it sees (its cost
        per step: bench/debug_hook_overhead.py, figures in bench/README.md). Losses (the loss
        module's own hook), weights and biases (read at the start of the step) need neither;
        gradients need only theirs. Any
        other collection, a changed include_regex or save_all keeps everything.
        """
        from smdebug.pytorch.collection import CollectionManager

        hook = self.hook
        defaults = CollectionManager()
        names = set(hook.include_collections or [])
        plain = names <= LAYERLESS_COLLECTIONS and all(
            hook.collection_manager.get(name).include_regex
            == defaults.get(name).include_regex for name in names)
        if hook.include_regex or hook.save_all or not plain:
            return True, True
        return False, "gradients" in names

    def _prune(self, criterion: nn.Module) -> None:
        layers, gradients = self._needs()
        kept = []
        for obj, attr, keys in self._added:
            drop: set[int] = set()
            if attr == "_backward_hooks" and not gradients:
                drop = set(keys)
            elif attr == "_forward_hooks" and not layers and obj is not criterion:
                hooks = getattr(obj, attr)
                drop = {k for k in keys if hooks.get(k) == self.hook.forward_hook}
            self._remove(obj, attr, drop)
            if keys - drop:
                kept.append((obj, attr, keys - drop))
        self._added = kept
        log.info("SageMaker Debugger: %s layer hooks, %s gradient hooks",
                 "with" if layers else "no", "with" if gradients else "no")

    @staticmethod
    def _remove(obj: Any, attr: str, keys: set[int]) -> None:
        hooks = getattr(obj, attr) or {}
        for key in keys:
            hooks.pop(key, None)
            for extra in _MODULE_HOOK_EXTRAS:
                extra_hooks = getattr(obj, extra, None)
                if isinstance(extra_hooks, dict):
                    extra_hooks.pop(key, None)

    def on_mode(self, mode: str) -> None:
        self.hook.set_mode(self._modes[mode])

    def on_train_end(self) -> None:
        """Close the hook (flushes the last step) and take its module hooks off the model, so
        the final scoring pass and the artifact export are not recorded as extra steps."""
        self.hook.close()
        self.detach()

    def detach(self) -> None:
        for obj, attr, keys in self._added:
            self._remove(obj, attr, keys)
        self._added = []


def make_debugger_callback(environ: dict[str, str] | None = None) -> DebuggerCallback | None:
    """The Debugger callback when SageMaker asked for one; None (smdebug untouched) otherwise."""
    path = config_path(environ)
    return DebuggerCallback(path) if path is not None else None
