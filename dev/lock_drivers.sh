#!/usr/bin/env bash
# Regenerate the drivers venv's hash-pinned locks from the hand-edited pins:
#   dev/requirements-drivers.txt      -> dev/requirements-drivers.lock       (what users install)
#   dev/requirements-drivers-test.txt -> dev/requirements-drivers-test.lock  (pytest, moto: tests)
#
#   dev/lock_drivers.sh               # needs access to PyPI (or PIP_INDEX_URL_FOR_LOCK)
#
# The drivers run on laptops: the locks hold the hashes of the wheels for Linux x86_64 and macOS
# (arm64, x86_64), CPython 3.11; pip resolves once per platform (`pip install --dry-run
# --report`, metadata only) and the versions must agree. The test lock holds only what the
# tests add: its packages' versions must not move any of the users' pins.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dev="${repo_root}/dev"
pip=(env PIP_CONFIG_FILE=/dev/null "${PYTHON:-python3}" -m pip)
index="${PIP_INDEX_URL_FOR_LOCK:-https://pypi.org/simple}"
work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
platforms=(
    "--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64"
    "--platform macosx_14_0_arm64 --platform macosx_14_0_universal2"
    "--platform macosx_14_0_x86_64 --platform macosx_14_0_universal2"
)

resolve() {  # resolve NAME REQUIREMENTS...: one pip report per platform
    local name="$1" i=0 platform
    shift
    for platform in "${platforms[@]}"; do
        # shellcheck disable=SC2086  # one string of --platform flags per platform
        "${pip[@]}" install --quiet --dry-run --ignore-installed --only-binary=:all: \
            --index-url "${index}" --python-version 3.11 --implementation cp ${platform} \
            --target "${work}/target" --report "${work}/${name}-${i}.json" "$@"
        i=$((i + 1))
    done
}

resolve users -r "${dev}/requirements-drivers.txt"
resolve all -r "${dev}/requirements-drivers.txt" -r "${dev}/requirements-drivers-test.txt"
"${PYTHON:-python3}" "${dev}/lock_drivers.py" "${work}" "${dev}"
