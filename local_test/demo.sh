#!/usr/bin/env bash
# The README's first command (`make demo`): from a fresh clone, build the images, train on the
# bundled sample data, serve the trained model, classify one test image, and leave the server
# running with a summary of where everything is and how to call and stop it.
#
#   local_test/demo.sh                # everything, images included (dev/setup_docker.sh)
#   SKIP_BUILD=1 local_test/demo.sh   # use the images as they are
#   DEMO_STOP=1 local_test/demo.sh    # stop the server at the end (tests do)
#
# Needs a Docker daemon that answers (Docker Desktop, or Linux as a docker-group member) and
# curl; as root on Debian/Ubuntu it installs and starts what is missing, otherwise it says
# what is missing. Environment: PORT (default 8080), TRAIN_IMAGE, SERVE_IMAGE, DEMO_IMAGE (the
# image to classify; default: the first JPEG of sample_data/photos5/test), HP_* (hyperparameters
# on top of local_test/test_dir/input/config/hyperparameters.json, see train_local.sh), and
# whatever dev/setup_docker.sh reads.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
export PORT="${PORT:-8080}"
# shellcheck source=docker/images.env
source "$REPO/docker/images.env"
export TRAIN_IMAGE="${TRAIN_IMAGE:-$DEFAULT_TRAIN_REPO:$LOCAL_TAG}"
export SERVE_IMAGE="${SERVE_IMAGE:-$DEFAULT_SERVE_REPO:$LOCAL_TAG}"
export SERVE_CONTAINER="${SERVE_CONTAINER:-sagemaker-resnet50-demo}"
TEST_DIR="$HERE/test_dir"
LOG_DIR="$TEST_DIR/logs"
IMAGE_FILE="${DEMO_IMAGE:-$(find "$REPO/sample_data/photos5/test" -name '*.jpg' | sort | head -1)}"
URL="http://127.0.0.1:$PORT"
t0=$(date +%s)

step() { printf '\n==> %s\n' "$*" >&2; }

if [[ "${SKIP_BUILD:-0}" != "1" ]]; then
    step "1/4 build the images (dev/setup_docker.sh; a cold build downloads ~3.5 GB of torch)"
    "$REPO/dev/setup_docker.sh"
fi

step "2/4 train: docker run $TRAIN_IMAGE train (local_test/train_local.sh; log: $LOG_DIR/train.log)"
mkdir -p "$LOG_DIR"
"$HERE/train_local.sh" 2>&1 | tee "$LOG_DIR/train.log"

step "3/4 serve: docker run -p 127.0.0.1:$PORT:8080 $SERVE_IMAGE serve (local_test/serve_local.sh)"
docker rm -f "$SERVE_CONTAINER" >/dev/null 2>&1 || true   # a server left by an earlier demo
DETACH=1 "$HERE/serve_local.sh" >/dev/null
stop() { docker rm -f "$SERVE_CONTAINER" >/dev/null 2>&1 || true; }
trap 'stop' ERR
# Wait for the first real answer (it proves more than /ping's 200).
ready=0
for _ in $(seq 120); do
    if curl -sf -o /dev/null -X POST -H 'Content-Type: image/jpeg' \
            --data-binary "@$IMAGE_FILE" "$URL/invocations"; then
        ready=1; break
    fi
    docker inspect "$SERVE_CONTAINER" >/dev/null 2>&1 || break
    sleep 2
done
if [[ "$ready" != 1 ]]; then
    docker logs --tail 40 "$SERVE_CONTAINER" >&2 || true
    stop
    echo "demo.sh: the server did not become ready" >&2
    exit 1
fi
echo "ping: $(curl -s "$URL/ping")" >&2

step "4/4 predict: local_test/predict.sh ${IMAGE_FILE#"$REPO"/}"
TOP_K="${TOP_K:-3}" "$HERE/predict.sh" "$IMAGE_FILE"
trap - ERR

# What the job trained from, and what that gives: the manifest records both.
read -r weights accuracy < <(docker run --rm --entrypoint python -v "$TEST_DIR/model:/m:ro" \
    "$TRAIN_IMAGE" -c '
import json
m = json.load(open("/m/manifest.json"))
print(m["hyperparameters"].get("weights", "?"), m["metrics"].get("test_accuracy", float("nan")))')
if [[ "$weights" == imagenet ]]; then
    about="ImageNet weights (test accuracy $accuracy on the sample data's test split)"
else
    about="random init, weights=$weights (test accuracy $accuracy): this image has no ImageNet"
    about+=" weights, so the prediction above is NOT meaningful; build where download.pytorch.org"
    about+=" answers to get them"
fi
cat >&2 <<EOF

==> done in $(( $(date +%s) - t0 )) s
  model:      $TEST_DIR/model  (trained from $about)
  report:     $TEST_DIR/output/data/report.html
  logs:       $LOG_DIR/train.log; build logs in $REPO/.build-logs/; server: docker logs $SERVE_CONTAINER
  call again: curl -s -X POST -H 'Content-Type: image/jpeg' --data-binary @${IMAGE_FILE#"$REPO"/} $URL/invocations
              (or local_test/predict.sh PHOTO.jpg)
EOF
if [[ "${DEMO_STOP:-0}" == 1 ]]; then
    stop
    echo "  server:     stopped (DEMO_STOP=1)" >&2
else
    echo "  stop:       docker rm -f $SERVE_CONTAINER" >&2
fi
