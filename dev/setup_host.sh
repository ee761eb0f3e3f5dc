#!/usr/bin/env bash
# Create (or refresh) the host venv .venv used by unit and integration tests.
# Idempotent: does nothing when .venv already matches dev/requirements-host.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${VENV:-.venv}
lock=dev/requirements-host.txt

# multi-model-server is a Java server and nginx stands in front of it (the serving tests start
# both for real); Chromium opens report.html in a test; g++ builds the compiled serving variant
# (tests/integration/test_compiled.py trains with compile=true).
packages=()
command -v java >/dev/null 2>&1 || packages+=(openjdk-17-jre-headless)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || packages+=(nginx)
command -v chromium >/dev/null 2>&1 || packages+=(chromium)
command -v g++ >/dev/null 2>&1 || packages+=(g++)
if [ ${#packages[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${packages[@]}" >/dev/null
fi

if ! { [ -x "$venv/bin/python" ] && cmp -s "$lock" "$venv/.installed-requirements"; }; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$lock"
    cp "$lock" "$venv/.installed-requirements"
    echo "host venv ready: $venv"
fi
bash dev/install_project.sh "$venv"
