"""report.html: one self-contained page (images embedded) about a finished run.

Built from the files of the output data dir alone (metrics.json, confusion_matrix.json/.png,
curves.png, step_times.csv, step_summary.json), so it can be rebuilt from a downloaded
output.tar.gz too::

    python -m container_train.report_html OUTPUT_DATA_DIR

It shows the final metrics, train vs valid curves, the confusion matrix, the step-time
breakdown (waiting for data vs compute), memory, and the findings of findings.py (also written
to findings.json).
"""

from __future__ import annotations

import base64
import csv
import html
import json
import logging
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display in a training container
import matplotlib.pyplot as plt

from container_train import findings as rules

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
FINDINGS_FILE = "findings.json"
STEP_TIMES_PNG = "step_times.png"
CALIBRATION_FILE = "calibration.json"  # container_train.trust's fit, written by reports.py
RELIABILITY_PNG = "reliability.png"
MAX_BARS = 300  # longer runs are averaged into this many bars


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _float(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def read_step_times(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return []
    return [{"mode": r["mode"], "step": int(r["step"]), "loss": _float(r["loss"]),
             "data_seconds": _float(r["data_seconds"]) or 0.0,
             "compute_seconds": _float(r["compute_seconds"]) or 0.0} for r in rows]


def plot_step_times(rows: list[dict[str, Any]], path: Path) -> bool:
    """Stacked bars per training step: waiting for data vs compute. False when no steps."""
    train = [r for r in rows if r["mode"] == "train"]
    if not train:
        return False
    data = [r["data_seconds"] * 1000 for r in train]
    compute = [r["compute_seconds"] * 1000 for r in train]
    width = max(1, -(-len(train) // MAX_BARS))  # steps per bar
    if width > 1:
        data = [sum(data[i:i + width]) / len(data[i:i + width])
                for i in range(0, len(data), width)]
        compute = [sum(compute[i:i + width]) / len(compute[i:i + width])
                   for i in range(0, len(compute), width)]
    x = [1 + i * width for i in range(len(data))]
    fig, ax = plt.subplots(figsize=(10, 3.5))
    ax.bar(x, compute, width=width * 0.9, label="compute", color="#4c72b0")
    ax.bar(x, data, width=width * 0.9, bottom=compute, label="waiting for data",
           color="#dd8452")
    ax.set_xlabel("training step" + (f" (mean of {width})" if width > 1 else ""))
    ax.set_ylabel("ms")
    ax.set_title("time per training step")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _img(path: Path, alt: str) -> str:
    if not path.is_file():
        return f"<p class='missing'>({html.escape(alt)}: not recorded)</p>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"<img src='data:image/png;base64,{data}' alt='{html.escape(alt)}'>"


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def _timing_section(summary: dict[str, Any] | None) -> str:
    if not summary or not summary.get("modes"):
        return "<p>No step timings were recorded (the run had no StepRecorder).</p>"
    rows = []
    for mode, m in summary["modes"].items():
        rows.append([mode, m["steps"], f"{m['median_data_seconds'] * 1000:.1f}",
                     f"{m['median_compute_seconds'] * 1000:.1f}",
                     f"{m['p90_step_seconds'] * 1000:.1f}", f"{m['data_fraction']:.0%}",
                     f"{m['images_per_sec']:.1f}"])
    table = _table(["mode", "steps", "median data wait (ms)", "median compute (ms)",
                    "p90 step (ms)", "time waiting for data", "images/s"], rows)
    memory = summary.get("memory", {})
    facts = [f"device {summary.get('device')}", f"batch size {summary.get('batch_size')}",
             f"{summary.get('num_workers')} DataLoader workers on {summary.get('cpu_count')} "
             "CPUs"]
    if memory.get("peak_rss_mb") is not None:
        facts.append(f"peak process memory {memory['peak_rss_mb']:.0f} MB")
    if memory.get("device_peak_mb") is not None:
        facts.append(f"peak GPU memory {memory['device_peak_mb']:.0f} of "
                     f"{memory.get('device_total_mb', 0):.0f} MB")
    if summary.get("debugger_configured"):
        facts.append("SageMaker Debugger hook on")
    else:
        facts.append("SageMaker Debugger hook off" + (
            "" if summary.get("smdebug_imported") else " (smdebug not imported)"))
    return (f"<p>{html.escape('; '.join(facts))}.</p>{table}"
            "<p class='note'>Medians leave out the first step of each pass (worker start-up, "
            "warm-up).</p>")


def _calibration_section(output_dir: Path) -> str:
    """ECE before/after temperature scaling, the novelty threshold, the reliability diagram."""
    fitted = _read_json(output_dir / CALIBRATION_FILE)
    if not fitted:
        return "<p>Not fitted (no valid image, or a run from before calibration).</p>"
    rows = [["temperature", _fmt(fitted.get("temperature"))],
            ["expected calibration error, T = 1", _fmt(fitted.get("ece_before"))],
            ["expected calibration error, fitted T", _fmt(fitted.get("ece_after"))],
            ["valid images", _fmt(fitted.get("valid_images"))]]
    novelty = fitted.get("novelty") or {}
    if novelty:
        rows += [["novelty score", _fmt(novelty.get("method"))],
                 ["abstain threshold", _fmt(novelty.get("threshold"))],
                 ["valid images that abstain", _fmt(novelty.get("valid_false_abstain"))]]
    return (_table(["", "value"], rows) + _img(output_dir / RELIABILITY_PNG,
                                               "reliability diagram")
            + "<p class='note'>Fitted and measured on the valid split: the same images, so "
            "the ECE after is optimistic; docs/artifact.md says what the numbers mean.</p>")


def _findings_section(found: list[rules.Finding]) -> str:
    checked = ", ".join(rule.__name__.replace("_", " ") for rule in rules.RULES)
    if not found:
        return (f"<p class='ok'>No rule fired. Checked: {html.escape(checked)}.</p>")
    items = "".join(
        f"<li class='finding' data-rule='{html.escape(f.rule)}'><strong>"
        f"{html.escape(f.title)}.</strong> {html.escape(f.message)} "
        f"<em>{html.escape(f.advice)}</em></li>" for f in found)
    return f"<ul>{items}</ul><p class='note'>Checked: {html.escape(checked)}.</p>"


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0; }
td, th { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; }
.finding { margin: .6em 0; } .ok { color: #2a7d2a; } .note, .missing { color: #777; }
"""


def build_report(output_dir: Path) -> tuple[str, list[rules.Finding]]:
    metrics = _read_json(output_dir / "metrics.json") or {}
    confusion = _read_json(output_dir / "confusion_matrix.json") or {}
    summary = _read_json(output_dir / "step_summary.json")
    steps = read_step_times(output_dir / "step_times.csv")
    plot_step_times(steps, output_dir / STEP_TIMES_PNG)
    facts = rules.RunFacts.from_outputs(
        metrics=metrics, step_summary=summary,
        train_step_losses=[r["loss"] for r in steps
                           if r["mode"] == "train" and r["loss"] is not None],
        num_classes=len(confusion.get("class_names", [])))
    found = rules.diagnose(facts)

    final = metrics.get("final", {})
    final_table = _table(["metric", "value"], [[k, _fmt(v)] for k, v in final.items()])
    history = metrics.get("history", [])
    history_table = _table(
        ["epoch", "train loss", "valid loss", "train accuracy", "valid accuracy", "seconds"],
        [[_fmt(h.get("epoch")), _fmt(h.get("train_loss")), _fmt(h.get("valid_loss")),
          _fmt(h.get("train_accuracy")), _fmt(h.get("valid_accuracy")),
          f"{h.get('epoch_time', 0):.1f}"] for h in history])
    split = confusion.get("split", "?")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Training report</title><style>{STYLE}</style></head>
<body>
<h1>Training report</h1>
<section id="findings"><h2>Findings</h2>{_findings_section(found)}</section>
<section id="metrics"><h2>Final metrics</h2>{final_table}
<p class="note">valid_* are those of the kept weights (best valid loss); test_* score them on
the test split.</p></section>
<section id="curves"><h2>Train vs valid</h2>
{_img(output_dir / "curves.png", "loss and accuracy curves")}
{history_table}</section>
<section id="steps"><h2>Step time</h2>{_timing_section(summary)}
{_img(output_dir / STEP_TIMES_PNG, "time per training step")}</section>
<section id="calibration"><h2>Calibration and abstention</h2>
{_calibration_section(output_dir)}</section>
<section id="confusion"><h2>Confusion matrix ({html.escape(str(split))} split)</h2>
{_img(output_dir / "confusion_matrix.png", "confusion matrix")}</section>
</body></html>
"""
    return page, found


def write_report(output_dir: Path) -> Path:
    """report.html and findings.json in output_dir; logs each finding."""
    page, found = build_report(output_dir)
    (output_dir / FINDINGS_FILE).write_text(
        json.dumps([f.to_dict() for f in found], indent=2) + "\n")
    path = output_dir / REPORT_FILE
    path.write_text(page, encoding="utf-8")
    for f in found:
        log.warning("finding: %s. %s %s", f.title, f.message, f.advice)
    log.info("report: %s (%d findings)", path, len(found))
    return path


if __name__ == "__main__":
    print(write_report(Path(sys.argv[1])))
