#!/usr/bin/env bash
# The README's first command (`make demo`): from a fresh clone, build the images, train on the
# bundled sample data, serve the trained model, classify one test image, stop the server.
#
#   local_test/demo.sh                # everything, images included (dev/setup_docker.sh)
#   SKIP_BUILD=1 local_test/demo.sh   # use the images as they are
#
# Environment: PORT (default 8080), TRAIN_IMAGE, SERVE_IMAGE, DEMO_IMAGE (the image to
# classify; default: the first JPEG of sample_data/photos5/test), and whatever
# dev/setup_docker.sh reads. Training uses local_test/test_dir/input/config/hyperparameters.json
# (64 px, 2 epochs, random init: a smoke run of about a minute on 2 CPUs, not a good model).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
export PORT="${PORT:-8080}"
export TRAIN_IMAGE="${TRAIN_IMAGE:-sagemaker-resnet50-train:latest}"
export SERVE_IMAGE="${SERVE_IMAGE:-sagemaker-resnet50-serve:latest}"
export SERVE_CONTAINER="${SERVE_CONTAINER:-sagemaker-resnet50-demo-$$}"
IMAGE_FILE="${DEMO_IMAGE:-$(find "$REPO/sample_data/photos5/test" -name '*.jpg' | sort | head -1)}"

step() { printf '\n==> %s\n' "$*" >&2; }

if [[ "${SKIP_BUILD:-0}" != "1" ]]; then
    step "1/4 build the images (dev/setup_docker.sh; the first build downloads ~3.5 GB of torch)"
    "$REPO/dev/setup_docker.sh"
fi

step "2/4 train: docker run $TRAIN_IMAGE train (local_test/train_local.sh)"
"$HERE/train_local.sh"

step "3/4 serve: docker run -p $PORT:8080 $SERVE_IMAGE serve (local_test/serve_local.sh)"
stop() { docker rm -f "$SERVE_CONTAINER" >/dev/null 2>&1 || true; }
trap stop EXIT
DETACH=1 "$HERE/serve_local.sh" >/dev/null
# Wait for the first real answer (it proves more than /ping's 200).
ready=0
for _ in $(seq 120); do
    if curl -sf -o /dev/null -X POST -H 'Content-Type: image/jpeg' \
            --data-binary "@$IMAGE_FILE" "http://localhost:$PORT/invocations"; then
        ready=1; break
    fi
    if ! docker inspect "$SERVE_CONTAINER" >/dev/null 2>&1; then break; fi
    sleep 2
done
if [[ "$ready" != 1 ]]; then
    docker logs --tail 40 "$SERVE_CONTAINER" >&2 || true
    echo "demo.sh: the server did not become ready" >&2
    exit 1
fi
echo "ping: $(curl -s "http://localhost:$PORT/ping")" >&2

step "4/4 predict: local_test/predict.sh ${IMAGE_FILE#"$REPO"/}"
TOP_K="${TOP_K:-3}" "$HERE/predict.sh" "$IMAGE_FILE"

step "done: stopping the server"
