#!/usr/bin/env bash
# Train with the training image the way SageMaker runs it: `docker run IMAGE train`, with
# local_test/test_dir as /opt/ml (config in input/config/*.json, as SageMaker writes it) and the
# sample data as the `training` channel. Like SageMaker, it mounts test_dir's input, model,
# output and checkpoints directories one by one: a mount over all of /opt/ml would hide the
# image's /opt/ml/code, where the training program lives. The model lands in test_dir/model, reports in
# test_dir/output. Adapted from AWS's scikit_bring_your_own local_test.
#
#   local_test/train_local.sh [IMAGE]
#   HP_EPOCHS=5 HP_IMAGE_SIZE=128 local_test/train_local.sh   # change hyperparameters
#
# Hyperparameters: test_dir/input/config/hyperparameters.json, and any HP_<NAME> variable on
# top of it (HP_IMAGE_SIZE=128 sets image-size; docs/training.md lists the names). The merged
# file is what the job sees; the committed one is never changed.
# The previous run's model is kept: test_dir/model moves to test_dir/previous-model (one
# generation) before the job starts, and the script says so.
#
# Environment: TRAIN_IMAGE (default sagemaker-resnet50-train:latest), TEST_DIR (default
# local_test/test_dir), DATA_DIR (default sample_data/photos5), DOCKER_RUN_ARGS (extra
# `docker run` arguments, e.g. "--network none"), TRAIN_CONTAINER (container name).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
# shellcheck source=docker/images.env
source "$REPO/docker/images.env"
IMAGE="${1:-${TRAIN_IMAGE:-$DEFAULT_TRAIN_REPO:$LOCAL_TAG}}"
TEST_DIR="$(realpath "${TEST_DIR:-$HERE/test_dir}")"
DATA_DIR="$(realpath "${DATA_DIR:-$REPO/sample_data/photos5}")"
NAME="${TRAIN_CONTAINER:-sagemaker-resnet50-train-local-$$}"
read -r -a EXTRA <<<"${DOCKER_RUN_ARGS:-}"

[[ -f "$TEST_DIR/input/config/hyperparameters.json" ]] || {
    echo "train_local.sh: $TEST_DIR has no input/config/hyperparameters.json" >&2; exit 2; }
[[ -d "$DATA_DIR/train" ]] || { echo "train_local.sh: no train/ split in $DATA_DIR" >&2; exit 2; }

# Files the container wrote belong to its root user: on Linux a docker-group member cannot
# delete them, so old runs are removed from inside a container of the same image.
remove_as_container() {  # remove_as_container NAME...: paths under $TEST_DIR
    local args=() name
    for name in "$@"; do [[ -e "$TEST_DIR/$name" ]] && args+=("/t/$name"); done
    [[ ${#args[@]} -eq 0 ]] && return 0
    rm -rf "${args[@]/#\/t/$TEST_DIR}" 2>/dev/null \
        || docker run --rm --entrypoint rm -v "$TEST_DIR:/t" "$IMAGE" -rf "${args[@]}"
}
# A fresh job (SageMaker starts every job with empty model, output and checkpoint
# directories), but the last model is kept one generation back.
if [[ -n "$(ls -A "$TEST_DIR/model" 2>/dev/null)" ]]; then
    remove_as_container previous-model
    mv "$TEST_DIR/model" "$TEST_DIR/previous-model"
    echo "train_local.sh: the previous model is kept in $TEST_DIR/previous-model"
fi
remove_as_container model output checkpoints job-config
mkdir -p "$TEST_DIR/model" "$TEST_DIR/output/data" "$TEST_DIR/checkpoints" \
         "$TEST_DIR/input/data/training" "$TEST_DIR/job-config"

# The job's config: the committed files, with HP_* variables merged into the hyperparameters
# (merged by the image's Python: the host may have none).
cp "$TEST_DIR"/input/config/*.json "$TEST_DIR/job-config/"
overrides=()
while IFS= read -r var; do overrides+=("$var=${!var}"); done < <(compgen -e | grep '^HP_.' || true)
if [[ ${#overrides[@]} -gt 0 ]]; then
    docker run --rm --entrypoint python -v "$TEST_DIR/job-config:/c" "$IMAGE" -c '
import json, sys
from job_contract.hyperparameters import canonical_name
path = "/c/hyperparameters.json"
hps = json.load(open(path))
for item in sys.argv[1:]:
    name, value = item.split("=", 1)
    hps[canonical_name(name[3:])] = value
json.dump(hps, open(path, "w"))' "${overrides[@]}"
fi

echo "train_local.sh: $IMAGE, data $DATA_DIR, hyperparameters $(cat "$TEST_DIR/job-config/hyperparameters.json")"
status=0
docker run --rm --name "$NAME" --hostname algo-1 --add-host algo-1:127.0.0.1 \
    -v "$TEST_DIR/input:/opt/ml/input" \
    -v "$TEST_DIR/job-config:/opt/ml/input/config" \
    -v "$TEST_DIR/model:/opt/ml/model" \
    -v "$TEST_DIR/output:/opt/ml/output" \
    -v "$TEST_DIR/checkpoints:/opt/ml/checkpoints" \
    -v "$DATA_DIR:/opt/ml/input/data/training:ro" \
    ${EXTRA[@]+"${EXTRA[@]}"} "$IMAGE" train || status=$?
if [[ "$status" -eq 0 ]]; then
    echo "train_local.sh: done; model in $TEST_DIR/model:" \
        "$(find "$TEST_DIR/model" -mindepth 1 -maxdepth 1 -printf '%f ')"
else
    echo "train_local.sh: training failed (exit $status); see $TEST_DIR/output/failure" >&2
fi
exit "$status"
