#!/usr/bin/env bash
# Decide which OS image the project's base image builds FROM, and say why.
#
#   docker/os_image.sh [auto|IMAGE]      prints the image on stdout, the reason on stderr
#
# auto (the default of OS_IMAGE everywhere): the official slim Debian image, pinned by digest
# below, when it is present or can be pulled; only when no registry answers, the debootstrap
# base built from the machine's Debian mirror (docker/build_base_os.sh), which needs root and
# debootstrap the first time. Any other value is used as it is.
#
# Environment: OS_IMAGE (the argument's default), DEBIAN_SLIM_IMAGE (the registry image; tests
# point it at a local registry), LOCAL_OS_IMAGE (the debootstrap image's name), PULL_TIMEOUT
# (seconds, default 120).
set -euo pipefail

# The one pin of the OS base: debian:bookworm-slim's multi-platform index as Docker Hub served
# it in 2026-09. Update it with `docker pull debian:bookworm-slim` + `docker inspect
# --format '{{index .RepoDigests 0}}' debian:bookworm-slim`.
DEBIAN_SLIM_PINNED="debian:bookworm-slim@sha256:3783cc01769c7b2b1b83a5c5ad96c815348e28ed7da68e2e3687004faa906251"
slim="${DEBIAN_SLIM_IMAGE:-$DEBIAN_SLIM_PINNED}"
local_os="${LOCAL_OS_IMAGE:-sagemaker-resnet50-os:bookworm}"
wanted="${1:-${OS_IMAGE:-auto}}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

say() { echo "os_image: $*" >&2; }

if [[ "$wanted" != auto ]]; then
    say "using $wanted (OS_IMAGE)"
    echo "$wanted"; exit 0
fi
if docker image inspect "$slim" >/dev/null 2>&1; then
    say "using $slim (present locally)"
    echo "$slim"; exit 0
fi
say "pulling $slim ..."
if pull_out="$(timeout "${PULL_TIMEOUT:-120}" docker pull "$slim" 2>&1)"; then
    say "using $slim (pulled from its registry)"
    echo "$slim"; exit 0
fi
why="$(printf '%s\n' "$pull_out" | grep -v '^\s*$' | tail -1 | cut -c1-160)"
if docker image inspect "$local_os" >/dev/null 2>&1; then
    say "no registry answered ($why): using $local_os, the debootstrap base built earlier"
    echo "$local_os"; exit 0
fi
if [[ "$(id -u)" -eq 0 ]] && ! command -v debootstrap >/dev/null && command -v apt-get >/dev/null; then
    say "installing debootstrap (apt-get), for the fallback base"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi
if [[ "$(id -u)" -ne 0 ]] || ! command -v debootstrap >/dev/null; then
    say "error: no registry answered ($why) and there is no local base image $local_os." \
        "Make the registry reachable, set OS_IMAGE to an image you have, or build the" \
        "fallback once as root: sudo docker/build_base_os.sh --tag $local_os --host-cas"
    exit 1
fi
say "no registry answered ($why): building $local_os with debootstrap (about 2 min)"
"$here/build_base_os.sh" --tag "$local_os" --host-cas >&2
echo "$local_os"
