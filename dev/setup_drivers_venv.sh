#!/usr/bin/env bash
# Create or update the drivers' venv (.venv-drivers) from dev/requirements-drivers.txt.
# Idempotent: reinstalls only when the requirements file changed since the last run.
#   dev/setup_drivers_venv.sh            # create/update
#   VENV=/path dev/setup_drivers_venv.sh # another location
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-${repo_root}/.venv-drivers}"
requirements="${repo_root}/dev/requirements-drivers.txt"
python="${PYTHON:-python3}"
stamp="${venv}/.requirements.sha256"

if [[ ! -x "${venv}/bin/python" ]]; then
    echo "creating ${venv}"
    "${python}" -m venv "${venv}"
fi

wanted="$(sha256sum "${requirements}" | cut -d' ' -f1)"
if [[ -f "${stamp}" && "$(cat "${stamp}")" == "${wanted}" ]]; then
    echo "${venv} is up to date"
    bash "${repo_root}/dev/install_project.sh" "${venv}"
    exit 0
fi

"${venv}/bin/python" -m pip install --quiet --upgrade pip
"${venv}/bin/python" -m pip install --quiet -r "${requirements}"
"${venv}/bin/python" -m pip check
bash "${repo_root}/dev/install_project.sh" "${venv}"
"${venv}/bin/python" -c "import sagemaker.train.tuner, boto3, moto; print('drivers venv ok')"
echo "${wanted}" > "${stamp}"
