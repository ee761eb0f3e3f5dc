"""What the commands in scripts/ share: run a driver's ``main`` from the installed ``drivers``
package, or say in one line how to install it. Python puts scripts/ on the path of
`python scripts/X.py`, so the launchers import this file as ``launch``."""

import importlib
import sys


def run(module: str) -> int:
    command = f"scripts/{sys.argv[0].rsplit('/', 1)[-1]}"
    try:
        main = importlib.import_module(module).main
    except ModuleNotFoundError as err:  # the project or the SDK is not installed in this python
        raise SystemExit(f"{err}: run `bash dev/setup_drivers_venv.sh`, then "
                         f".venv-drivers/bin/python {command} (docs/drivers.md)") from None
    return main()
