#!/usr/bin/env bash
# Serve a trained model with the serving image the way SageMaker runs it:
# `docker run -p PORT:8080 IMAGE serve` with the model directory mounted read-only as
# /opt/ml/model, as SageMaker provides it.
# Runs in the foreground (Ctrl-C stops it) unless DETACH=1, which prints the container id.
#
#   local_test/serve_local.sh [IMAGE]
#
# Environment: SERVE_IMAGE (default sagemaker-resnet50-serve:latest), PORT (host port,
# default 8080), MODEL_DIR (default local_test/test_dir/model, written by train_local.sh),
# BIND_ADDRESS (host address the port is published on, default 127.0.0.1: only this machine
# can reach the server; 0.0.0.0 for every interface), SERVE_CONTAINER (container name, default
# sagemaker-resnet50-serve-local), DETACH=1,
# DOCKER_RUN_ARGS (extra `docker run` arguments, e.g. "-e SAGEMAKER_MODEL_SERVER_WORKERS=1").
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=docker/images.env
source "$(dirname "$HERE")/docker/images.env"
IMAGE="${1:-${SERVE_IMAGE:-$DEFAULT_SERVE_REPO:$LOCAL_TAG}}"
PORT="${PORT:-8080}"
MODEL_DIR="$(realpath "${MODEL_DIR:-$HERE/test_dir/model}")"
NAME="${SERVE_CONTAINER:-sagemaker-resnet50-serve-local}"
read -r -a EXTRA <<<"${DOCKER_RUN_ARGS:-}"

[[ -f "$MODEL_DIR/manifest.json" ]] || {
    echo "serve_local.sh: no model in $MODEL_DIR (run local_test/train_local.sh first)" >&2; exit 2; }

ARGS=(--rm --name "$NAME" -p "${BIND_ADDRESS:-127.0.0.1}:$PORT:8080" -v "$MODEL_DIR:/opt/ml/model:ro")
if [[ "${DETACH:-0}" == "1" ]]; then
    ARGS+=(--detach)
else
    ARGS+=(--init)   # Ctrl-C reaches the server
fi
echo "serve_local.sh: $IMAGE on http://${BIND_ADDRESS:-127.0.0.1}:$PORT (model $MODEL_DIR)" >&2
exec docker run "${ARGS[@]}" ${EXTRA[@]+"${EXTRA[@]}"} "$IMAGE" serve
