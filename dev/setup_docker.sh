#!/usr/bin/env bash
# Make Docker usable and the project's images current. Uses what is there: when `docker info`
# answers (Docker Desktop, or Linux as a member of the docker group), it installs nothing and
# needs no root. Only when something is missing *and* this is root on Debian/Ubuntu does it
# install and start it; otherwise it says in one line what is missing and how to get it, and
# exits non-zero. Idempotent; the image builds reuse Docker's layer cache.
#
#   dev/setup_docker.sh              # a Docker daemon and curl (the demo's needs), then the images
#   dev/setup_docker.sh --for-tests  # also docker-compose and docker-registry (container tests)
#   dev/setup_docker.sh --no-build   # only the daemon
#
# Environment (defaults; the image names come from docker/images.env):
#   OS_IMAGE=auto            the pinned debian:bookworm-slim, or the debootstrap base when no
#                            registry answers (docker/os_image.sh)
#   BASE_IMAGE=sagemaker-resnet50-base:latest
#   TRAIN_IMAGE=sagemaker-resnet50-train:latest
#   SERVE_IMAGE=sagemaker-resnet50-serve:latest
#   BAKE_IMAGENET_WEIGHTS=auto   1/0; auto = 1 if download.pytorch.org answers, else 0
#   TORCH_INDEX_URL=, LOCK_SUFFIX=   the CPU-only variant (docker/README.md)
#   DOCKER_BUILD_ARGS=            extra `docker build` arguments (e.g. --pull, --no-cache)
#   DOCKERD_LOG=/var/log/dockerd-setup.log   where a dockerd started here logs
# The build itself is `build_and_push.sh --no-push`: one build path for users, demo and CI.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=docker/images.env
source "$REPO/docker/images.env"
TRAIN_IMAGE="${TRAIN_IMAGE:-$DEFAULT_TRAIN_REPO:$LOCAL_TAG}"
SERVE_IMAGE="${SERVE_IMAGE:-$DEFAULT_SERVE_REPO:$LOCAL_TAG}"
DOCKERD_LOG="${DOCKERD_LOG:-/var/log/dockerd-setup.log}"
mode="${1:-}"

say() { echo "setup_docker: $*" >&2; }
die() { say "error: $*"; exit 1; }

can_install() {  # root on a Debian/Ubuntu machine with apt
    [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null \
        && grep -qiE '^(ID|ID_LIKE)=.*(debian|ubuntu)' /etc/os-release 2>/dev/null
}
apt_install() {
    say "installing $* (apt-get, as root)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "$@" >/dev/null
}
need_commands() {  # need_commands PACKAGE:COMMAND ...: install the missing ones, or say how
    local missing=() item
    for item in "$@"; do command -v "${item#*:}" >/dev/null || missing+=("${item%%:*}"); done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    can_install || die "missing ${missing[*]}: install it (e.g. sudo apt-get install" \
        "${missing[*]}; brew install ${missing[*]} on macOS) and run this again"
    apt_install "${missing[@]}"
}

start_dockerd() {
    say "starting dockerd (log: $DOCKERD_LOG)"
    # Not a systemd machine (a CI container or VM without init): run the daemon ourselves.
    if command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
        systemctl start docker
    else
        nohup dockerd >"$DOCKERD_LOG" 2>&1 &
    fi
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && return 0; sleep 1; done
    tail -20 "$DOCKERD_LOG" >&2
    die "dockerd did not answer in 60 s"
}
ensure_docker() {
    docker info >/dev/null 2>&1 && return 0
    local why=""
    command -v docker >/dev/null && why="$(docker info 2>&1 | grep -iE 'permission denied|cannot connect' | head -1 || true)"
    if [[ "$why" == *"ermission denied"* ]]; then
        die "you may not use the Docker daemon's socket: add yourself to the docker group" \
            "(sudo usermod -aG docker \$USER, then log in again) or use Docker Desktop"
    fi
    if ! can_install; then
        die "no Docker daemon answers: start Docker Desktop or the docker service" \
            "(sudo systemctl start docker); to install Docker: https://docs.docker.com/engine/install/"
    fi
    command -v dockerd >/dev/null || apt_install docker.io
    start_dockerd
}

ensure_docker
say "docker $(docker version --format '{{.Server.Version}}' 2>/dev/null) answers"
need_commands curl:curl
if [[ "$mode" == --for-tests ]]; then
    # The container tests: SDK local mode needs docker-compose; the push/pull and OS-base tests
    # run a real registry on 127.0.0.1.
    need_commands docker-compose:docker-compose docker-registry:docker-registry
fi
[[ "$mode" == --no-build ]] && exit 0

# One build path for everyone: the script users run to build and push, without the push. It
# prints its progress (and where the full logs are) itself.
t0=$(date +%s)
TRAIN_REPO="${TRAIN_IMAGE%:*}" SERVE_REPO="${SERVE_IMAGE%:*}" "$REPO/build_and_push.sh" --no-push
# build_and_push.sh tags :latest (+ version, git sha); honour any other tag asked for here.
for image in "$TRAIN_IMAGE" "$SERVE_IMAGE"; do
    [[ "$image" == *:latest ]] || docker tag "${image%:*}:latest" "$image"
done
say "images ready in $(( $(date +%s) - t0 )) s: $TRAIN_IMAGE, $SERVE_IMAGE"
