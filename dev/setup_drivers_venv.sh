#!/usr/bin/env bash
# Create or update the drivers' venv (.venv-drivers) from the hash-pinned lock
# dev/requirements-drivers.lock (what users need: SDK v3 parts, boto3, optuna, matplotlib);
# --tests adds dev/requirements-drivers-test.lock (pytest, moto: the contract tests).
# Idempotent: reinstalls only when the lock files changed since the last run.
#   dev/setup_drivers_venv.sh            # create/update (users)
#   dev/setup_drivers_venv.sh --tests    # also the test packages (dev/test.sh)
#   VENV=/path dev/setup_drivers_venv.sh # another location
# Regenerate the locks after editing dev/requirements-drivers*.txt: dev/lock_drivers.sh
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-${repo_root}/.venv-drivers}"
python="${PYTHON:-python3}"
stamp="${venv}/.requirements.sha256"
locks=("${repo_root}/dev/requirements-drivers.lock")
probe="import sagemaker.train.tuner, boto3, optuna, matplotlib"
case "${1:-}" in
    --tests) locks+=("${repo_root}/dev/requirements-drivers-test.lock")
             probe="${probe}, pytest, moto" ;;
    "") ;;
    *) echo "usage: $0 [--tests]" >&2; exit 2 ;;
esac

if [[ ! -x "${venv}/bin/python" ]]; then
    echo "creating ${venv}"
    "${python}" -m venv "${venv}"
fi

wanted="$(cat "${locks[@]}" | sha256sum | cut -d' ' -f1)"
if [[ -f "${stamp}" && "$(cat "${stamp}")" == "${wanted}" ]]; then
    echo "${venv} is up to date"
    bash "${repo_root}/dev/install_project.sh" "${venv}"
    exit 0
fi

requirements=()
for lock in "${locks[@]}"; do requirements+=(-r "${lock}"); done
"${venv}/bin/python" -m pip install --quiet --upgrade pip
"${venv}/bin/python" -m pip install --quiet --require-hashes "${requirements[@]}"
"${venv}/bin/python" -m pip check
bash "${repo_root}/dev/install_project.sh" "${venv}"
"${venv}/bin/python" -c "${probe}; print('drivers venv ok')"
echo "${wanted}" > "${stamp}"
