"""Documentation that restates a code table must match it."""

from pathlib import Path

from job_contract.docs_table import hyperparameter_table

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_training_doc_has_the_current_hyperparameter_table():
    assert hyperparameter_table() in (DOCS / "training.md").read_text(), (
        "docs/training.md is stale: paste `python -m job_contract.docs_table` into it")
