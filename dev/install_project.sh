#!/usr/bin/env bash
# Install this checkout into a venv in editable mode, so that `python scripts/tune.py`, the
# benches and the tests import the project's packages from the working tree with no sys.path
# set-up of their own. Offline and idempotent (the build backend comes from the venv itself).
#   dev/install_project.sh VENV
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:?usage: dev/install_project.sh VENV}"

# A .pth with the repository root (setuptools' "compat" editable mode): packages added to the
# tree later are importable without reinstalling.
if "${venv}/bin/python" -m pip show --quiet sagemaker-resnet-byoc >/dev/null 2>&1; then
    exit 0
fi
"${venv}/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    --no-build-isolation --config-settings editable_mode=compat -e "${repo_root}"
echo "installed ${repo_root} into ${venv} (editable)"
