"""``python -m container_serve [serve|check] [--model-dir DIR] [--port N]``."""

import os
import sys

from container_serve.serve import main

code = main()
if sys.argv[1:2] == ["check"]:  # serve's check child: skip tearing down torch (about 1 s)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
