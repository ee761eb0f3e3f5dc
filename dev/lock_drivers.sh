#!/usr/bin/env bash
# Regenerate the drivers venv's hash-pinned locks from the hand-edited pins:
#   dev/requirements-drivers.txt      -> dev/requirements-drivers.lock       (what users install)
#   dev/requirements-drivers-test.txt -> dev/requirements-drivers-test.lock  (pytest, moto: tests)
#
#   dev/lock_drivers.sh               # needs access to PyPI (or PIP_INDEX_URL_FOR_LOCK)
#
# Target: CPython 3.11 on Linux x86_64 (manylinux), the platform of the dev VM, CI and the
# images. LOCK_MACOS=1 also adds the hashes of the macOS arm64 wheels of the same versions
# (resolved with the Linux pins as constraints; a package with no such wheel fails the run).
# pip resolves with `pip install --dry-run --report` (index metadata, no install). The test
# lock holds only what the tests add: its packages must not move any of the users' pins.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dev="${repo_root}/dev"
pip=(env PIP_CONFIG_FILE=/dev/null "${PYTHON:-python3}" -m pip)
index="${PIP_INDEX_URL_FOR_LOCK:-https://pypi.org/simple}"
work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
linux="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64"
macos="--platform macosx_14_0_arm64 --platform macosx_11_0_universal2 --platform macosx_10_9_universal2"

resolve() {  # resolve REPORT PLATFORM-FLAGS REQUIREMENTS...
    local report="$1" platform="$2"
    shift 2
    # shellcheck disable=SC2086  # one string of --platform flags
    "${pip[@]}" install --quiet --dry-run --ignore-installed --only-binary=:all: \
        --index-url "${index}" --python-version 3.11 --implementation cp ${platform} \
        --target "${work}/target" --report "${work}/${report}" "$@"
}

users=(-r "${dev}/requirements-drivers.txt")
everything=("${users[@]}" -r "${dev}/requirements-drivers-test.txt")
resolve users-linux.json "${linux}" "${users[@]}"
resolve all-linux.json "${linux}" "${everything[@]}"
if [[ "${LOCK_MACOS:-0}" == 1 ]]; then
    "${PYTHON:-python3}" "${dev}/lock_drivers.py" --constraints "${work}" > "${work}/pins.txt"
    resolve users-macos.json "${macos}" "${users[@]}" -c "${work}/pins.txt"
    resolve all-macos.json "${macos}" "${everything[@]}" -c "${work}/pins.txt"
fi
"${PYTHON:-python3}" "${dev}/lock_drivers.py" "${work}" "${dev}"
