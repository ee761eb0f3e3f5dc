"""Documentation that restates a code table must match it."""

import re
from pathlib import Path

from job_contract.docs_table import hyperparameter_table

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


def test_training_doc_has_the_current_hyperparameter_table():
    assert hyperparameter_table() in (DOCS / "training.md").read_text(), (
        "docs/training.md is stale: paste `python -m job_contract.docs_table` into it")


def test_docs_name_only_job_contract_modules_that_exist():
    """The pages say where each shared fact is defined: job_contract/X.py or job_contract.X."""
    named = {(page.name, module) for page in [*DOCS.glob("*.md"), REPO / "README.md"]
             for module in re.findall(r"job_contract[/.](\w+)", page.read_text())}
    assert {module for _, module in named} >= {"hyperparameters", "metrics", "sagemaker_paths"}
    missing = sorted((page, module) for page, module in named
                     if not (REPO / "job_contract" / f"{module}.py").is_file())
    assert not missing
