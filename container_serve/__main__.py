"""``python -m container_serve [serve|check] [--model-dir DIR] [--port N]``."""

import sys

from container_serve.serve import main

sys.exit(main())
