#!/usr/bin/env bash
# Make Docker usable and the project's images current, on a fresh Debian machine or a warm one.
# Idempotent; every step is skipped when already done, and the image builds reuse the layer
# cache (a warm run with unchanged sources takes seconds).
#
#   dev/setup_docker.sh            # docker + debootstrap, dockerd, OS base, base/train/serve
#   dev/setup_docker.sh --no-build # only docker + dockerd
#
# 1. installs docker.io, docker-compose and debootstrap with apt if missing (needs root);
# 2. starts dockerd in the background if no daemon answers, and waits for it (log:
#    $DOCKERD_LOG, default /var/log/dockerd-setup.log);
# 3. builds the OS image with docker/build_base_os.sh (debootstrap + the host's extra CAs)
#    when OS_IMAGE is the local air-gapped name and no such image exists yet;
# 4. builds BASE_IMAGE, TRAIN_IMAGE, SERVE_IMAGE from docker/Dockerfile.{base,train,serve}.
#
# Environment (defaults):
#   OS_IMAGE=sagemaker-resnet50-os:bookworm   set to debian:bookworm-slim where a registry works
#   BASE_IMAGE=sagemaker-resnet50-base:latest
#   TRAIN_IMAGE=sagemaker-resnet50-train:latest
#   SERVE_IMAGE=sagemaker-resnet50-serve:latest
#   BAKE_IMAGENET_WEIGHTS=auto   1/0; auto = 1 if download.pytorch.org answers, else 0
#   TORCH_INDEX_URL=, LOCK_SUFFIX=   the CPU-only variant: see docker/README text / Dockerfile.base
#   DOCKER_BUILD_ARGS=            extra `docker build` arguments (e.g. --pull, --no-cache)
# The build itself is `build_and_push.sh --no-push`: one build path for users, demo and CI.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OS_IMAGE="${OS_IMAGE:-sagemaker-resnet50-os:bookworm}"
BASE_IMAGE="${BASE_IMAGE:-sagemaker-resnet50-base:latest}"
TRAIN_IMAGE="${TRAIN_IMAGE:-sagemaker-resnet50-train:latest}"
SERVE_IMAGE="${SERVE_IMAGE:-sagemaker-resnet50-serve:latest}"
BAKE="${BAKE_IMAGENET_WEIGHTS:-auto}"
DOCKERD_LOG="${DOCKERD_LOG:-/var/log/dockerd-setup.log}"

say() { echo "setup_docker: $*" >&2; }
elapsed() { echo "$(( $(date +%s) - $1 ))s"; }

# --- 1. packages ---------------------------------------------------------------------------
missing=()
# Docker's own engine: `dockerd` (a `docker` client alone, as on these machines, is not enough).
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v curl >/dev/null || missing+=(curl)
# A real registry on 127.0.0.1 for build_and_push.sh's push/pull test.
command -v docker-registry >/dev/null || missing+=(docker-registry)
if [[ ${#missing[@]} -gt 0 ]]; then
    [[ "$(id -u)" -eq 0 ]] || { say "need root to install ${missing[*]}"; exit 1; }
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- 2. daemon -----------------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
    say "starting dockerd (log: $DOCKERD_LOG)"
    # Not a systemd machine (a CI container or VM without init): run the daemon ourselves.
    if command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
        systemctl start docker
    else
        nohup dockerd >"$DOCKERD_LOG" 2>&1 &
    fi
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 || { say "dockerd did not answer in 60 s"; tail -20 "$DOCKERD_LOG" >&2; exit 1; }
fi
say "docker $(docker version --format '{{.Server.Version}}' 2>/dev/null) answers"
[[ "${1:-}" == "--no-build" ]] && exit 0

# --- 3. the OS base image ------------------------------------------------------------------
if ! docker image inspect "$OS_IMAGE" >/dev/null 2>&1; then
    if [[ "$OS_IMAGE" == sagemaker-resnet50-os:* ]]; then
        t0=$(date +%s)
        say "building $OS_IMAGE with debootstrap (no registry needed)"
        "$REPO/docker/build_base_os.sh" --tag "$OS_IMAGE" --host-cas
        say "built $OS_IMAGE in $(elapsed "$t0")"
    else
        say "$OS_IMAGE is not local; docker build will pull it"
    fi
fi

# --- 4. the project images -----------------------------------------------------------------
if [[ "$BAKE" == auto ]]; then
    if curl -sfI -m 10 -o /dev/null https://download.pytorch.org/models/resnet50-11ad3fa6.pth; then
        BAKE=1
    else
        BAKE=0
        say "download.pytorch.org unreachable: building $TRAIN_IMAGE without ImageNet weights"
    fi
fi
# One build path for everyone: the script users run to build and push, without the push.
t0=$(date +%s)
log="$(mktemp /tmp/docker-build.XXXXXX.log)"
say "building $BASE_IMAGE, $TRAIN_IMAGE, $SERVE_IMAGE (build_and_push.sh --no-push)"
if ! OS_IMAGE="$OS_IMAGE" BASE_IMAGE="$BASE_IMAGE" BAKE_IMAGENET_WEIGHTS="$BAKE" \
        TRAIN_REPO="${TRAIN_IMAGE%:*}" SERVE_REPO="${SERVE_IMAGE%:*}" \
        "$REPO/build_and_push.sh" --no-push >"$log" 2>&1; then
    tail -40 "$log" >&2
    say "FAILED (full log: $log)"
    exit 1
fi
rm -f "$log"
# build_and_push.sh tags :latest (+ version, git sha); honour any other tag asked for here.
for image in "$TRAIN_IMAGE" "$SERVE_IMAGE"; do
    [[ "$image" == *:latest ]] || docker tag "${image%:*}:latest" "$image"
done
say "built in $(elapsed "$t0")"
say "images ready: $TRAIN_IMAGE, $SERVE_IMAGE (base $BASE_IMAGE on $OS_IMAGE)"
