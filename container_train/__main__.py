"""``python -m container_train --data-dir D --model-dir M --output-data-dir O [--lr 0.01 ...]``."""

import sys

from container_train.main import main

sys.exit(main())
