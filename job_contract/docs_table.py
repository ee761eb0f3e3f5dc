"""Render the hyperparameter table of docs/training.md from SPECS (a test keeps them equal)."""

from __future__ import annotations

from job_contract.hyperparameters import SPECS


def hyperparameter_table() -> str:
    rows = ["| name | type | default | valid values | meaning |", "|---|---|---|---|---|"]
    for spec in SPECS:
        rows.append(f"| `{spec.name}` | {spec.kind} | `{spec.default}` | "
                    f"{spec.describe_range()} | {spec.help} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(hyperparameter_table())
