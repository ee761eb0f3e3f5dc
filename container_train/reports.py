"""Files in the output data dir (SageMaker uploads it as output.tar.gz): metrics and plots."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display in a training container
import matplotlib.pyplot as plt

from container_train import report_html
from container_train.report_html import CALIBRATION_FILE, RELIABILITY_PNG


def confusion_matrix(labels: list[int], predictions: list[int], num_classes: int
                     ) -> list[list[int]]:
    """Rows are true classes, columns predicted ones."""
    matrix = [[0] * num_classes for _ in range(num_classes)]
    for truth, pred in zip(labels, predictions, strict=True):
        matrix[truth][pred] += 1
    return matrix


def per_class_accuracy(matrix: list[list[int]], class_names: list[str]
                       ) -> dict[str, float | None]:
    return {name: (row[i] / sum(row) if sum(row) else None)
            for i, (name, row) in enumerate(zip(class_names, matrix, strict=True))}


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def plot_curves(history: list[dict[str, float]], path: Path) -> None:
    epochs = [int(h["epoch"]) for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        ax.plot(epochs, [h[f"train_{metric}"] for h in history], "o-", label="train")
        ax.plot(epochs, [h[f"valid_{metric}"] for h in history], "o-", label="valid")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(matrix: list[list[int]], class_names: list[str], path: Path) -> None:
    n = len(class_names)
    size = min(4 + 0.25 * n, 40)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    if n <= 40:  # 133 labels would be unreadable; the JSON has them
        ax.set_xticks(range(n), class_names, rotation=90)
        ax.set_yticks(range(n), class_names)
        for i in range(n):
            for j in range(n):
                if matrix[i][j]:
                    ax.text(j, i, matrix[i][j], ha="center", va="center", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_reliability(calibration: dict[str, Any], path: Path) -> None:
    """The reliability diagram: accuracy vs confidence per bin, before and after temperature
    scaling (a calibrated model lies on the diagonal)."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for key, label in (("bins_before", "T = 1"),
                       ("bins_after", f"T = {calibration['temperature']:.2f}")):
        bins = [b for b in calibration[key] if b["count"]]
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-",
                label=label)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"reliability ({calibration.get('split', 'valid')} split, "
                 f"{calibration.get('valid_images', 0)} images)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_reports(output_dir: Path, *, class_names: list[str], history: list[dict[str, float]],
                  final: dict[str, float], eval_split: str, labels: list[int],
                  predictions: list[int], figures: bool = True,
                  calibration: dict[str, Any] | None = None) -> None:
    """metrics.json, per_class_accuracy.json, confusion_matrix.json, calibration.json (when
    given: container_train.trust), then (``figures``) the figures and report.html from them:
    local tuning renders those only for its best trial."""
    output_dir.mkdir(parents=True, exist_ok=True)
    matrix = confusion_matrix(labels, predictions, len(class_names))
    _write_json(output_dir / "metrics.json", {"final": final, "history": history})
    _write_json(output_dir / "per_class_accuracy.json",
                {"split": eval_split, "accuracy": per_class_accuracy(matrix, class_names)})
    _write_json(output_dir / "confusion_matrix.json",
                {"split": eval_split, "class_names": class_names, "matrix": matrix})
    if calibration is not None:
        _write_json(output_dir / CALIBRATION_FILE, calibration)
    if figures:
        render_figures(output_dir)


def render_figures(output_dir: Path) -> None:
    """confusion_matrix.png, curves.png and report.html from the JSON files in output_dir.
    Separate from write_reports because matplotlib costs most of a cached-feature tuning
    trial (bench/README.md), so local tuning renders them for its best trials only."""
    confusion = json.loads((output_dir / "confusion_matrix.json").read_text())
    history = json.loads((output_dir / "metrics.json").read_text())["history"]
    plot_confusion(confusion["matrix"], confusion["class_names"],
                   output_dir / "confusion_matrix.png")
    if history:
        plot_curves(history, output_dir / "curves.png")
    if (output_dir / CALIBRATION_FILE).is_file():
        plot_reliability(json.loads((output_dir / CALIBRATION_FILE).read_text()),
                         output_dir / RELIABILITY_PNG)
    try:  # report.html + findings.json, from the files above (and the step timings)
        report_html.write_report(output_dir)
    except Exception:  # a convenience: never fail a finished job over it
        logging.getLogger(__name__).exception("could not write report.html")
