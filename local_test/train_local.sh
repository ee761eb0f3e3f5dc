#!/usr/bin/env bash
# Train with the training image the way SageMaker runs it: `docker run IMAGE train`, with
# local_test/test_dir as /opt/ml (config in input/config/*.json, as SageMaker writes it) and the
# sample data as the `training` channel. Like SageMaker, it mounts test_dir's input, model,
# output and checkpoints directories one by one: a mount over all of /opt/ml would hide the
# image's /opt/ml/code, where the training program lives. The model lands in test_dir/model, reports in
# test_dir/output. Adapted from AWS's scikit_bring_your_own local_test.
#
#   local_test/train_local.sh [IMAGE]
#
# Environment: TRAIN_IMAGE (default sagemaker-resnet50-train:latest), TEST_DIR (default
# local_test/test_dir), DATA_DIR (default sample_data/photos5), DOCKER_RUN_ARGS (extra
# `docker run` arguments, e.g. "--network none"), TRAIN_CONTAINER (container name).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
IMAGE="${1:-${TRAIN_IMAGE:-sagemaker-resnet50-train:latest}}"
TEST_DIR="$(realpath "${TEST_DIR:-$HERE/test_dir}")"
DATA_DIR="$(realpath "${DATA_DIR:-$REPO/sample_data/photos5}")"
NAME="${TRAIN_CONTAINER:-sagemaker-resnet50-train-local-$$}"
read -r -a EXTRA <<<"${DOCKER_RUN_ARGS:-}"

[[ -f "$TEST_DIR/input/config/hyperparameters.json" ]] || {
    echo "train_local.sh: $TEST_DIR has no input/config/hyperparameters.json" >&2; exit 2; }
[[ -d "$DATA_DIR/train" ]] || { echo "train_local.sh: no train/ split in $DATA_DIR" >&2; exit 2; }

# A fresh job: SageMaker starts every job with empty model and output directories.
rm -rf "$TEST_DIR/model" "$TEST_DIR/output" "$TEST_DIR/checkpoints"
mkdir -p "$TEST_DIR/model" "$TEST_DIR/output/data" "$TEST_DIR/checkpoints" \
         "$TEST_DIR/input/data/training"

echo "train_local.sh: $IMAGE, data $DATA_DIR, hyperparameters $(tr -d '\n' <"$TEST_DIR/input/config/hyperparameters.json")"
# The toolkit resolves every host named in resourceconfig.json (and retries for 15 minutes
# if it cannot): --add-host keeps algo-1 resolvable also with `--network none`.
status=0
docker run --rm --name "$NAME" --hostname algo-1 --add-host algo-1:127.0.0.1 \
    -v "$TEST_DIR/input:/opt/ml/input" \
    -v "$TEST_DIR/model:/opt/ml/model" \
    -v "$TEST_DIR/output:/opt/ml/output" \
    -v "$TEST_DIR/checkpoints:/opt/ml/checkpoints" \
    -v "$DATA_DIR:/opt/ml/input/data/training:ro" \
    "${EXTRA[@]}" "$IMAGE" train || status=$?
if [[ "$status" -eq 0 ]]; then
    echo "train_local.sh: done; model in $TEST_DIR/model:" \
        "$(find "$TEST_DIR/model" -mindepth 1 -maxdepth 1 -printf '%f ')"
else
    echo "train_local.sh: training failed (exit $status); see $TEST_DIR/output/failure" >&2
fi
exit "$status"
