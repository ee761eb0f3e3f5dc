"""tune.py --attach JOB --report DIR: the tuning report of a SageMaker tuning job, built from
the paginated ListTrainingJobsForHyperParameterTuningJob answers (tests/contract/responses/)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from drivers import tuning_job as tune
from tests.chromium import render, require_chromium
from tests.contract.conftest import REGION

RESPONSES = json.loads((Path(__file__).parent / "responses" / "tuning_job_hpo-7.json")
                       .read_text())
PAGES = RESPONSES["ListTrainingJobsForHyperParameterTuningJob"]
TRIALS = [t for page in PAGES for t in page["TrainingJobSummaries"]]
BEST = RESPONSES["DescribeHyperParameterTuningJob"]["BestTrainingJob"]


def answers() -> dict:
    def list_page(params: dict) -> dict:
        assert params["SortBy"] == "CreationTime" and params["SortOrder"] == "Ascending"
        return PAGES[int(params.get("NextToken", "page-1").split("-")[1]) - 1]

    return {"DescribeHyperParameterTuningJob": RESPONSES["DescribeHyperParameterTuningJob"],
            "ListTrainingJobsForHyperParameterTuningJob": list_page}


@pytest.fixture
def report(run_driver, tmp_path: Path) -> tuple:
    out = tmp_path / "report"
    result = run_driver(tune, ["--region", REGION, "--attach", "hpo-7", "--report", str(out)],
                        answers())
    assert result.rc == 0, result.err
    return result, out


def test_every_page_of_trials_is_read(report):
    result, _ = report
    tokens = [c.params.get("NextToken") for c in result.recorder.calls
              if c.operation == "ListTrainingJobsForHyperParameterTuningJob"]
    assert tokens == [None, "page-2", "page-3"]
    assert not [op for op in result.operations() if op.startswith(("Create", "Stop"))]


def test_trials_csv_has_every_trial_with_state_values_and_time(report):
    _, out = report
    with (out / "trials.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert [r["name"] for r in rows] == [t["TrainingJobName"] for t in TRIALS]
    assert [r["state"] for r in rows] == ["Completed", "Completed", "Pruned", "Failed",
                                          "Completed", "Running"]
    first = rows[0]
    assert (float(first["lr"]), first["batch-size"], int(first["epochs"])) == (0.0021, "32", 6)
    assert float(first["valid:accuracy"]) == 0.8125
    assert float(first["seconds"]) == 450.0  # TrainingStartTime 09:02:10 -> End 09:09:40
    assert rows[3]["note"] == "AlgorithmError: CUDA out of memory"
    assert rows[3]["valid:accuracy"] == rows[5]["valid:accuracy"] == ""


def test_report_shows_the_best_trial_and_optunas_plots(report):
    _, out = report
    page = (out / "tuning_report.html").read_text()
    best = re.search(r'<tr class="best">(.*?)</tr>', page).group(1)
    assert BEST["TrainingJobName"] in best and "0.9062" in best
    assert "best trial: " + BEST["TrainingJobName"] in page
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page)
    assert captions == ["Objective per trial", "Parallel coordinates",
                        "Hyperparameter importances"]
    sources = re.findall(r"""src=['"]([^'"]*)['"]""", page)
    assert len(sources) == 3 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in page and "https://" not in page and "<link" not in page


def test_report_renders_in_headless_chromium(report, tmp_path):
    browser = require_chromium()
    _, out = report
    shown = render(browser, out / "tuning_report.html", ["tr.best td", "#summary li"], tmp_path)
    assert shown["errors"] == []
    assert len(shown["images"]) == 3
    assert all(i["ok"] and i["w"] > 300 and i["h"] > 200 for i in shown["images"]), shown
    cells = shown["text"]["tr.best td"]
    assert cells[1] == BEST["TrainingJobName"] and cells[2] == "Completed"
    assert float(cells[6]) == pytest.approx(0.90625, abs=1e-3)
    assert shown["text"]["#summary li"][0] == "6 trials: 3 completed, 1 pruned, 1 failed, " \
                                              "1 running"


def test_without_report_no_listing_is_made(run_driver, tmp_path):
    result = run_driver(tune, ["--region", REGION, "--attach", "hpo-7"], answers())
    assert result.rc == 0, result.err
    assert "ListTrainingJobsForHyperParameterTuningJob" not in result.operations()
