#!/usr/bin/env bash
# The project's test command (`make test`, also what CI runs). On a fresh Debian machine, as
# root, it installs and starts everything the tests need, then runs every level:
#   lint -> unit + integration (host venv) -> contract (drivers venv) -> container (Docker).
# Each set-up step is idempotent and fast when already done.
#   SKIP_CONTAINER=1 dev/test.sh   # everything but Docker (quick local loop)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n=== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }
start=$(date +%s)

# A full run writes about 5 GB of checkpoints and artifacts under $TMPDIR (pytest keeps only
# failed tests' directories) and needs room for the images; a full disk otherwise shows up as
# an obscure "iostream error" from torch.save in the middle of the run.
# What the tests need beyond `make demo` (the host tests run multi-model-server on Java, nginx
# and Chromium; the container tests a local registry and docker-compose), said before any
# long step: as root on Debian/Ubuntu the set-up below installs the missing ones.
step "prerequisites"
missing=()
for tool in java nginx chromium g++ shellcheck docker-compose docker-registry; do
    command -v "$tool" >/dev/null || [[ -x "/usr/sbin/$tool" ]] || missing+=("$tool")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "make test: everything it needs is installed"
elif [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "make test: will install ${missing[*]} with apt-get (root), and Docker if no daemon answers"
else
    echo "make test needs ${missing[*]}: run it as root on Debian/Ubuntu (it installs them)," \
         "or install them first; \`make demo\` needs only Docker and curl" >&2
    exit 1
fi

step "free disk"
tmp=$(python3 -c 'import tempfile; print(tempfile.gettempdir())')
free_gb=$(df -P --block-size=1G "$tmp" | awk 'NR == 2 {print $4}')
echo "$free_gb GB free on the file system of $tmp (need ${MIN_FREE_GB:=8})"
if (( free_gb < MIN_FREE_GB )); then
    echo "error: less than $MIN_FREE_GB GB free for $tmp: clear old runs (e.g. $tmp/pytest-of-*)" >&2
    exit 1
fi

step "host venv (.venv)"
bash dev/setup_host.sh
step "drivers venv (.venv-drivers)"
bash dev/setup_drivers_venv.sh --tests

step "lint: ruff + shellcheck"
.venv/bin/ruff check .
if ! command -v shellcheck >/dev/null; then
    apt-get update -qq && apt-get install -y -qq shellcheck >/dev/null
fi
git ls-files '*.sh' .ci/run | xargs shellcheck -x  # -x: follow `source docker/images.env`

step "unit + integration tests"
.venv/bin/python -m pytest tests/unit tests/integration -q -p no:cacheprovider

step "contract tests (drivers against captured AWS requests)"
CONTRACT_TESTS_REQUIRED=1 .venv-drivers/bin/python -m pytest tests/contract -q -p no:cacheprovider

if [[ "${SKIP_CONTAINER:-0}" != 1 ]]; then
    step "docker daemon and images"
    bash dev/setup_docker.sh --for-tests
    step "container tests (real images, run as SageMaker runs them)"
    # Required here: a missing daemon or image fails the run instead of skipping tests.
    CONTAINER_TESTS_REQUIRED=1 .venv/bin/python -m pytest tests/container -q -p no:cacheprovider
fi
step "all tests passed in $(( $(date +%s) - start )) s"
