"""The shared driver modules load no AWS library and no torch (docs/drivers.md, "Code layout").

Which driver may import which is checked with the other import rules, with planted-violation
controls, in tests/unit/test_import_rules.py."""

from __future__ import annotations

import subprocess
import sys


def test_the_shared_modules_need_no_aws_library():
    # predict.py --url runs on the standard library alone (docs/drivers.md)
    code = ("import sys, drivers.common, drivers.predict, drivers.search_space; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'boto3', 'botocore', 'sagemaker', 'torch', 'optuna'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
