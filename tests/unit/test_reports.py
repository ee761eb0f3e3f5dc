"""The output data dir's reports: JSON always, figures and report.html on demand."""

from __future__ import annotations

import json

from container_train import reports

HISTORY = [{"epoch": 1, "train_loss": 1.2, "train_accuracy": 0.4, "valid_loss": 1.1,
            "valid_accuracy": 0.5, "epoch_time": 1.0, "images_per_sec": 10.0},
           {"epoch": 2, "train_loss": 0.8, "train_accuracy": 0.7, "valid_loss": 0.9,
            "valid_accuracy": 0.6, "epoch_time": 1.0, "images_per_sec": 10.0}]


def write(tmp_path, figures):
    reports.write_reports(tmp_path, class_names=["a", "b"], history=HISTORY,
                          final={"best_epoch": 2, "valid_loss": 0.9}, eval_split="test",
                          labels=[0, 1, 1], predictions=[0, 1, 0], figures=figures)


def test_without_figures_only_the_json_files(tmp_path):
    write(tmp_path, figures=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "confusion_matrix.json", "metrics.json", "per_class_accuracy.json"]
    matrix = json.loads((tmp_path / "confusion_matrix.json").read_text())["matrix"]
    assert matrix == [[1, 0], [1, 1]]


def test_render_figures_later_gives_what_a_full_write_gives(tmp_path):
    write(tmp_path / "later", figures=False)
    reports.render_figures(tmp_path / "later")
    write(tmp_path / "full", figures=True)
    names = {p.name for p in (tmp_path / "full").iterdir()}
    assert {"curves.png", "confusion_matrix.png", "report.html"} <= names
    assert {p.name for p in (tmp_path / "later").iterdir()} == names
