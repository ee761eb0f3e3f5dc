"""Where a local search keeps its Optuna study, so an interrupted search can be resumed.

The study lives in SQLite in the output directory (OUTPUT/study.db) unless ``--storage URL``
names another Optuna storage. Optuna writes each trial to it as the trial ends, so a crash or
Ctrl-C loses at most the trial in flight. ``--resume NAME`` loads the study and runs what is
left of ``--max-jobs``; what the best-job file needs about earlier trials (hyperparameters,
final metrics, per-epoch metrics) is kept with each trial as user attributes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DB_NAME = "study.db"
# Trials that ended by themselves; an interrupted one (Ctrl-C, a killed process) does not count
# towards --max-jobs and is run again on --resume.
COUNTED = ("COMPLETE", "PRUNED")


class StudyError(Exception):
    """The study to resume is missing or does not match the arguments."""


def storage_url(storage: str | None, output: Path) -> str:
    """``--storage`` as given, else SQLite in the output directory (an absolute path)."""
    return storage or f"sqlite:///{(output / DB_NAME).resolve()}"


def open_study(optuna: Any, url: str, name: str, resume: bool, direction: str,
               sampler: Any, pruner: Any) -> Any:
    """A new study named ``name`` in ``url``, or (``resume``) the existing one. Trials still
    marked running were cut short by the end of an earlier process: they are marked failed."""
    if not resume:
        try:
            return optuna.create_study(study_name=name, storage=url, direction=direction,
                                       sampler=sampler, pruner=pruner)
        except optuna.exceptions.DuplicatedStudyError:
            raise StudyError(f"a study named {name} is already in {url}: "
                             f"continue it with --resume {name}") from None
    try:
        study = optuna.load_study(study_name=name, storage=url, sampler=sampler, pruner=pruner)
    except KeyError:
        names = optuna.get_all_study_names(storage=url)
        raise StudyError(f"--resume {name}: no such study in {url} (studies there: "
                         f"{', '.join(names) or 'none'})") from None
    if study.direction.name.lower() != direction:
        raise StudyError(f"--resume {name}: the study is set to {study.direction.name.lower()}, "
                         f"the objective now to {direction}")
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    # The same seed would sample the first trials again.
    study.sampler.reseed_rng()
    return study


def counted(trial: Any) -> bool:
    """Whether a trial used up one of --max-jobs: it completed, was pruned, or its training
    failed (a failure the objective recorded, not an interruption)."""
    state = trial.state.name
    return state in COUNTED or (state == "FAIL" and bool(trial.user_attrs.get("note")))


def trials_left(study: Any, max_jobs: int) -> int:
    return max(0, max_jobs - sum(counted(t) for t in study.get_trials(deepcopy=False)))


def remember(trial: Any, **attrs: Any) -> None:
    """Keep values with the trial in the storage (JSON; NaN stays NaN)."""
    for key, value in attrs.items():
        trial.set_user_attr(key, json.loads(json.dumps(value, default=float)))


def restore(search: Any, study: Any) -> None:
    """Refill a local Search from the trials an earlier process stored."""
    from drivers.local_tuning import Row, row_value

    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        if "hyperparameters" in attrs:
            search.hyperparameters[t.number] = attrs["hyperparameters"]
        if "history" in attrs:
            search.history[t.number] = attrs["history"]
        seconds = ((t.datetime_complete - t.datetime_start).total_seconds()
                   if t.datetime_complete and t.datetime_start else 0.0)
        search.table.rows[t.number] = Row(
            t.number, state={"COMPLETE": "Completed", "PRUNED": "Pruned"}.get(
                t.state.name, "Failed"),
            params=attrs.get("hyperparameters", t.params), value=t.value, seconds=seconds,
            note=attrs.get("note", ""))
        if t.state.name == "COMPLETE" and "final" in attrs:
            search.finals[t.number] = attrs["final"]
            if search.best is None or search.better(t.value, row_value(search, search.best)):
                search.best = t.number
    search.table.best = search.best

