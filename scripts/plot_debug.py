#!/usr/bin/env python3
"""Plot train vs eval loss per step from SageMaker Debugger output (what the seed's notebook
did with ``create_trial``).

    python scripts/plot_debug.py debug/JOB/debug-output --out loss.png

Needs smdebug and matplotlib, and not the SageMaker SDK: smdebug's protobuf pin (<=3.20.3)
cannot share a venv with SDK v3, so ``train.py --analyze`` downloads the output and runs this
file with an interpreter that has smdebug (``SMDEBUG_PYTHON``, or the repository's ``.venv``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")


def read_losses(out_dir: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{tensor name: {"train"/"eval": [(global step, value), ...]}} for the losses collection."""
    from smdebug.core.modes import ModeKeys
    from smdebug.trials import create_trial

    trial = create_trial(str(out_dir))
    names = trial.tensor_names(collection="losses") or [
        n for n in trial.tensor_names() if "loss" in n.lower()]
    if not names:
        raise SystemExit(f"no loss tensors in {out_dir} (collections: "
                         f"{sorted(trial.collections())})")
    losses: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for name in names:
        tensor = trial.tensor(name)
        per_mode: dict[str, list[tuple[int, float]]] = {}
        for label, mode in (("train", ModeKeys.TRAIN), ("eval", ModeKeys.EVAL)):
            points = []
            for step in tensor.steps(mode=mode):
                value = tensor.value(step, mode=mode)
                points.append((int(trial.global_step(mode, step)), float(value.mean())))
            per_mode[label] = points
        losses[name] = per_mode
    return losses


def plot(losses: dict[str, dict[str, list[tuple[int, float]]]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    for name, modes in losses.items():
        for mode, points in modes.items():
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, marker="." if mode == "eval" else None,
                        linestyle="-" if mode == "train" else "--", label=f"{mode} {name}")
    ax.set_xlabel("global step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("debug_output", type=Path, help="a local copy of JOB/debug-output")
    p.add_argument("--out", type=Path, default=Path("loss.png"))
    p.add_argument("--json", type=Path, help="also write the points as JSON")
    args = p.parse_args(argv)
    try:
        losses = read_losses(args.debug_output)
    except ImportError as exc:
        print(f"error: smdebug is not installed in {sys.executable} ({exc}); see "
              "docs/drivers.md (--analyze)", file=sys.stderr)
        return 2
    plot(losses, args.out, f"train vs eval loss: {args.debug_output}")
    if args.json:
        args.json.write_text(json.dumps(losses, indent=1))
    for name, modes in losses.items():
        summary = ", ".join(f"{mode}: {len(points)} steps, last {points[-1][1]:.4f}"
                            for mode, points in modes.items() if points)
        print(f"{name}: {summary}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
