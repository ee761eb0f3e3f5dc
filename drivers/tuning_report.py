"""One tuning report for both tuning paths: ``trials.csv`` and a self-contained
``tuning_report.html`` drawn from one trial table.

The table comes from an Optuna study (``tune.py --local``, read from its storage) or from a
SageMaker tuning job (DescribeHyperParameterTuningJob + the paginated
ListTrainingJobsForHyperParameterTuningJob). The plots are Optuna's own
(``optuna.visualization.matplotlib``): the SageMaker trials are loaded into an in-memory study
(``optuna.trial.create_trial`` + ``study.add_trial``), so one plotting code serves both paths.
The page embeds its images as data: URIs and loads nothing at view time.

Needs optuna and matplotlib (both venvs have them); no torch, no SageMaker SDK.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPORT_NAME = "tuning_report.html"
CSV_NAME = "trials.csv"
# Optuna's trial states as the report and trials.csv spell them (SageMaker's own words).
STATES = {"COMPLETE": "Completed", "PRUNED": "Pruned", "FAIL": "Failed", "RUNNING": "Running",
          "WAITING": "Waiting"}


@dataclass
class Trial:
    """One trial: a local Optuna trial or a SageMaker training job of a tuning job."""

    number: int
    name: str
    state: str  # an Optuna TrialState name: COMPLETE, PRUNED, FAIL, RUNNING
    params: dict[str, Any]
    value: float | None = None
    started: datetime | None = None
    ended: datetime | None = None
    note: str = ""
    intermediate: dict[int, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float | None:
        if self.started is None or self.ended is None:
            return None
        return (self.ended - self.started).total_seconds()


@dataclass
class TrialTable:
    """Every trial of one search, with what the plots need (the tuned ranges as Optuna
    distributions) and where the search lives (a storage URL, or a SageMaker job)."""

    title: str
    objective: str  # metric name, e.g. valid:accuracy
    maximize: bool
    distributions: dict[str, Any]  # tuned name -> optuna.distributions.BaseDistribution
    trials: list[Trial]
    source: str = ""  # a line saying where the trials come from

    def best(self) -> Trial | None:
        done = [t for t in self.trials if t.state == "COMPLETE" and t.value is not None]
        if not done:
            return None
        return (max if self.maximize else min)(done, key=lambda t: t.value)


# -- building the table ------------------------------------------------------------------------

def table_from_study(study: Any, objective: str, names: dict[int, str] | None = None,
                     source: str = "") -> TrialTable:
    """The trials of an Optuna study (any storage). ``names``: number -> trial name."""
    trials, distributions = [], {}
    for t in study.get_trials(deepcopy=False):
        distributions.update(t.distributions)
        trials.append(Trial(
            number=t.number, name=(names or {}).get(t.number, f"trial-{t.number:03d}"),
            state=t.state.name, params=dict(t.params), value=t.value,
            started=t.datetime_start, ended=t.datetime_complete,
            note=str(t.user_attrs.get("note", "")), intermediate=dict(t.intermediate_values)))
    return TrialTable(title=study.study_name, objective=objective,
                      maximize=study.direction.name == "MAXIMIZE",
                      distributions=distributions, trials=trials, source=source)


def _distributions(job: dict[str, Any]) -> dict[str, Any]:
    """The tuning job's ParameterRanges as Optuna distributions (same names, bounds, scale)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    ranges = job["HyperParameterTuningJobConfig"].get("ParameterRanges", {})
    out: dict[str, Any] = {}
    for r in ranges.get("ContinuousParameterRanges", []):
        out[r["Name"]] = FloatDistribution(float(r["MinValue"]), float(r["MaxValue"]),
                                           log=r.get("ScalingType") == "Logarithmic")
    for r in ranges.get("IntegerParameterRanges", []):
        out[r["Name"]] = IntDistribution(int(r["MinValue"]), int(r["MaxValue"]),
                                         log=r.get("ScalingType") == "Logarithmic")
    for r in ranges.get("CategoricalParameterRanges", []):
        out[r["Name"]] = CategoricalDistribution([str(v) for v in r["Values"]])
    return out


def _param(value: str, distribution: Any) -> Any:
    """A TunedHyperParameters string (SageMaker quotes categorical ones) as the distribution
    holds it."""
    text = value.strip().strip('"')
    kind = type(distribution).__name__
    if kind == "FloatDistribution":
        return float(text)
    if kind == "IntDistribution":
        return int(float(text))
    return text


def _sagemaker_state(summary: dict[str, Any]) -> tuple[str, str]:
    """SageMaker's trial status as an Optuna state, with a note where the mapping loses
    something."""
    status = summary.get("TrainingJobStatus", "")
    has_objective = "FinalHyperParameterTuningJobObjectiveMetric" in summary
    if status == "Completed":
        if has_objective and summary.get("ObjectiveStatus") != "Failed":
            return "COMPLETE", ""
        return "FAIL", "completed without reporting the objective"
    if status == "Stopped":  # early stopping (or a user's StopTrainingJob)
        return "PRUNED", "stopped"
    if status == "Failed":
        return "FAIL", summary.get("FailureReason", "")
    return "RUNNING", status


def table_from_tuning_job(job: dict[str, Any], summaries: list[dict[str, Any]]) -> TrialTable:
    """The trials of a SageMaker tuning job (DescribeHyperParameterTuningJob's answer and the
    training job summaries of ListTrainingJobsForHyperParameterTuningJob, oldest first)."""
    objective = job["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]
    distributions = _distributions(job)
    trials = []
    for number, s in enumerate(summaries):
        state, note = _sagemaker_state(s)
        tuned = s.get("TunedHyperParameters", {})
        metric = s.get("FinalHyperParameterTuningJobObjectiveMetric") or {}
        trials.append(Trial(
            number=number, name=s.get("TrainingJobName", "?"), state=state,
            params={n: _param(tuned[n], d) for n, d in distributions.items() if n in tuned},
            value=metric.get("Value"), started=_time(s.get("TrainingStartTime")),
            ended=_time(s.get("TrainingEndTime")), note=note))
    name = job["HyperParameterTuningJobName"]
    return TrialTable(
        title=name, objective=objective["MetricName"], maximize=objective["Type"] == "Maximize",
        distributions=distributions, trials=trials,
        source=f"SageMaker tuning job {name} ({job.get('HyperParameterTuningJobStatus', '?')})")


def _time(value: Any) -> datetime | None:
    """boto3 gives datetimes; canned JSON answers give ISO strings."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def study_from_table(table: TrialTable) -> Any:
    """An in-memory Optuna study holding the table's finished trials, for Optuna's plots.
    Running trials are left out (Optuna plots finished trials only)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "a new study created"
    study = optuna.create_study(study_name=table.title,
                                direction="maximize" if table.maximize else "minimize")
    for t in table.trials:
        if t.state not in ("COMPLETE", "PRUNED", "FAIL"):
            continue
        value = t.value if t.state == "COMPLETE" else None
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState[t.state], value=value, params=t.params,
            distributions={n: table.distributions[n] for n in t.params},
            intermediate_values=t.intermediate))
    return study


# -- writing it --------------------------------------------------------------------------------

def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def csv_rows(table: TrialTable) -> list[list[str]]:
    """trials.csv: a header, then one row per trial (values in full precision)."""
    names = list(table.distributions)
    rows = [["number", "name", "state", *names, table.objective, "seconds", "started", "note"]]
    for t in table.trials:
        rows.append([str(t.number), t.name, STATES.get(t.state, t.state),
                     *("" if t.params.get(n) is None else str(t.params[n]) for n in names),
                     "" if t.value is None else repr(float(t.value)),
                     "" if t.seconds is None else f"{t.seconds:.1f}",
                     "" if t.started is None else t.started.isoformat(timespec="seconds"),
                     t.note])
    return rows


def plots(table: TrialTable) -> list[tuple[str, bytes | str]]:
    """Optuna's plots of the table as (title, PNG bytes) or (title, why there is none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as vis

    study = study_from_table(table)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    # PED-ANOVA needs no scikit-learn (Optuna's default fANOVA evaluator does).
    importance = optuna.importance.PedAnovaImportanceEvaluator()
    wanted = [
        ("Objective per trial", lambda: vis.plot_optimization_history(
            study, target_name=table.objective)),
        ("Parallel coordinates", lambda: vis.plot_parallel_coordinate(
            study, target_name=table.objective)),
        ("Hyperparameter importances", lambda: vis.plot_param_importances(
            study, evaluator=importance, target_name=table.objective)),
    ]
    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        wanted.append(("Objective per epoch (pruned trials stop early)",
                       lambda: vis.plot_intermediate_values(study)))
    out: list[tuple[str, bytes | str]] = []
    for title, draw in wanted:
        if len(complete) < 2 and title != "Objective per trial":
            out.append((title, f"needs 2 completed trials ({len(complete)} so far)"))
            continue
        try:
            with warnings.catch_warnings():  # matplotlib plots are "experimental" in Optuna
                warnings.simplefilter("ignore")
                axes = draw()
            figure = getattr(axes, "figure", None) or axes.flat[0].figure
            figure.set_size_inches(8, 4.5)
            figure.tight_layout()
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=80)
            plt.close(figure)
            out.append((title, buffer.getvalue()))
        except (ValueError, RuntimeError) as exc:  # e.g. one distinct value: no importance
            out.append((title, f"not drawn: {exc}"))
    return out


def _html_table(table: TrialTable) -> str:
    rows = csv_rows(table)
    best = table.best()
    head = "".join(f"<th>{html.escape(h)}</th>" for h in rows[0])
    body = []
    for t, row in zip(table.trials, rows[1:], strict=True):
        # as trials.csv, with the numbers rounded for reading
        shown = [*row[:3], *(_fmt(t.params.get(n)) for n in table.distributions),
                 _fmt(t.value), row[-3], row[-2].replace("T", " "), row[-1]]
        css = ' class="best"' if best is not None and t.number == best.number else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{html.escape(c)}</td>" for c in shown)
                    + "</tr>")
    return f'<table id="trials"><tr>{head}</tr>\n' + "\n".join(body) + "\n</table>"


def _summary(table: TrialTable) -> str:
    counts = {}
    for t in table.trials:
        counts[STATES.get(t.state, t.state)] = counts.get(STATES.get(t.state, t.state), 0) + 1
    lines = [f"{len(table.trials)} trials: " + ", ".join(f"{n} {s.lower()}"
                                                         for s, n in counts.items()),
             f"objective: {table.objective} ({'maximize' if table.maximize else 'minimize'})"]
    best = table.best()
    if best is None:
        lines.append("best trial: none completed")
    else:
        params = ", ".join(f"{n}={_fmt(v)}" for n, v in best.params.items())
        lines.append(f"best trial: {best.name}: {table.objective} = {_fmt(best.value)} "
                     f"({params})")
    if table.source:
        lines.append(table.source)
    return "".join(f"<li>{html.escape(line)}</li>" for line in lines)


STYLE = """body{font-family:sans-serif;margin:1.5em;max-width:70em}
table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #ccc;padding:2px 6px}
td{white-space:nowrap}td:last-child{white-space:normal;min-width:16em}
tr.best{background:#e6f4e6;font-weight:bold}figure{margin:1em 0}img{max-width:100%}"""


def render_html(table: TrialTable) -> str:
    figures = []
    for title, image in plots(table):
        if isinstance(image, bytes):
            data = base64.b64encode(image).decode("ascii")
            body = f'<img alt="{html.escape(title)}" src="data:image/png;base64,{data}">'
        else:
            body = f"<p>{html.escape(image)}</p>"
        figures.append(f"<figure><figcaption>{html.escape(title)}</figcaption>{body}</figure>")
    title = html.escape(f"Tuning report: {table.title}")
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{STYLE}</style></head><body>\n<h1>{title}</h1>\n"
            f'<ul id="summary">{_summary(table)}</ul>\n<h2>Trials</h2>\n{_html_table(table)}\n'
            f'<h2>Plots</h2>\n<div id="plots">{"".join(figures)}</div>\n</body></html>\n')


def write_report(table: TrialTable, directory: Path) -> Path:
    """Write DIR/trials.csv and DIR/tuning_report.html; return the HTML's path."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / CSV_NAME).open("w", newline="") as stream:
        csv.writer(stream).writerows(csv_rows(table))
    page = directory / REPORT_NAME
    page.write_text(render_html(table))
    return page



def report_tuning_job(sm: Any, name: str, directory: Path) -> Path:
    """trials.csv and tuning_report.html for a SageMaker tuning job (a boto3 SageMaker
    client); every trial, read page by page."""
    from drivers.tuning_job import list_trials

    job = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    return write_report(table_from_tuning_job(job, list_trials(sm, name)), directory)
