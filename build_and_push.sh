#!/usr/bin/env bash
# Build the training and serving images and push them to Amazon ECR (or any registry).
#
#   ./build_and_push.sh                   build, make sure the ECR repositories exist with scan on
#                                         push and immutable tags, log in, push, report the
#                                         scan findings, write image_uris.json
#   ./build_and_push.sh --no-push         build only (local tags, no AWS calls)
#   ./build_and_push.sh --registry HOST   push to HOST[:PORT] instead of ECR (no AWS calls)
#   ./build_and_push.sh --skip-build      push the images already built (e.g. by a CI step)
#   ./build_and_push.sh --quiet           no build or push progress lines (errors still show)
#   ./build_and_push.sh --no-scan-wait    push without waiting for ECR's scan findings
#
# Tags: <version> (pyproject.toml), git-<sha> (-dirty when a file the images are built from is
# changed or untracked) and latest. In ECR every tag is immutable except `latest` and `*-dirty`
# (IMMUTABLE_WITH_EXCLUSION): a version tag that already names another image is reported and
# left as it is. image_uris.json gets the git-<sha> URIs and whether the training image holds
# the ImageNet weights; the drivers in scripts/ read it.
#
# Progress: each build prints its step (n/m), what it runs and the bytes it received so far at
# least every PROGRESS_SECONDS (20); the full logs are in BUILD_LOG_DIR (.build-logs/).
#
# Environment (defaults):
#   AWS_REGION              else `aws configure get region`
#   OS_IMAGE                auto: the pinned debian:bookworm-slim, or the debootstrap base when
#                           no registry answers (docker/os_image.sh says which and why)
#   BAKE_IMAGENET_WEIGHTS   auto: torchvision's ImageNet ResNet50 weights in the training image
#                           when download.pytorch.org answers (1: always, 0: never)
#   TORCH_INDEX_URL, LOCK_SUFFIX   CPU-only torch variant (see docker/Dockerfile.base)
#   TRAIN_REPO, SERVE_REPO  sagemaker-resnet50-train, sagemaker-resnet50-serve (docker/images.env)
#   BASE_IMAGE              sagemaker-resnet50-base:latest (local only, never pushed)
#   IMAGE_URIS_FILE         image_uris.json in this folder
#   DOCKER_BUILD_ARGS       extra `docker build` arguments (e.g. --pull, --no-cache)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
push=1
build=1
registry=""
quiet=0
scan_wait=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --no-push) push=0; shift ;;
        --skip-build) build=0; shift ;;
        --quiet) quiet=1; shift ;;
        --no-scan-wait) scan_wait=0; shift ;;
        --registry) [[ $# -ge 2 ]] || { echo "error: --registry needs HOST[:PORT]" >&2; exit 2; }
                    registry="$2"; shift 2 ;;
        -h|--help) sed -n '2,34p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

os_image="${OS_IMAGE:-auto}"
# shellcheck source=docker/images.env
source "$repo/docker/images.env"
base_image="${BASE_IMAGE:-$DEFAULT_BASE_REPO:$LOCAL_TAG}"
train_repo="${TRAIN_REPO:-$DEFAULT_TRAIN_REPO}"
serve_repo="${SERVE_REPO:-$DEFAULT_SERVE_REPO}"
uris_file="${IMAGE_URIS_FILE:-$repo/image_uris.json}"
bake="${BAKE_IMAGENET_WEIGHTS:-auto}"
log_dir="${BUILD_LOG_DIR:-$repo/.build-logs}"
progress_seconds="${PROGRESS_SECONDS:-20}"
read -r -a extra_build <<<"${DOCKER_BUILD_ARGS:-}"

die() { echo "error: $*" >&2; exit 1; }
say() { echo "build_and_push: $*" >&2; }
progress() { [[ $quiet -eq 1 ]] || say "$@"; }

command -v docker >/dev/null || die "docker not found: install Docker (https://docs.docker.com/engine/install/)"
docker info >/dev/null 2>&1 || die "no Docker daemon answers: start Docker (e.g. 'sudo systemctl start docker')"
if [[ $push -eq 1 && -z "$registry" ]]; then
    command -v aws >/dev/null || die "AWS CLI not found: install AWS CLI v2 (https://docs.aws.amazon.com/cli/) or use --registry HOST / --no-push"
fi

# ECR: region and account first, so a missing setting fails before a 10-minute build.
if [[ $push -eq 1 && -z "$registry" ]]; then
    region="${AWS_REGION:-$(aws configure get region || true)}"
    [[ -n "$region" ]] || die "no AWS region: set AWS_REGION or run 'aws configure set region REGION'"
    account="$(aws sts get-caller-identity --query Account --output text)" \
        || die "cannot read the AWS account (aws sts get-caller-identity): check your credentials"
    suffix="amazonaws.com"
    [[ "$region" == cn-* ]] && suffix="amazonaws.com.cn"
    registry="$account.dkr.ecr.$region.$suffix"
    ecr=1
fi

version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/pyproject.toml" | head -1)"
[[ -n "$version" ]] || die "no version in pyproject.toml"
# What the Dockerfiles COPY (.dockerignore): a change there, committed or not, tracked or
# not, changes the images, so it must show in the tag.
shipped=(docker pyproject.toml job_contract model_artifact container_train container_serve)
if sha="$(git -C "$repo" rev-parse --short=12 HEAD 2>/dev/null)"; then
    changed="$(git -C "$repo" status --porcelain --untracked-files=all -- "${shipped[@]}")"
    if [[ -n "$changed" ]]; then
        sha="$sha-dirty"
        say "tagging git-$sha: $(printf '%s\n' "$changed" | grep -c .) changed or untracked" \
            "file(s) under ${shipped[*]}"
    fi
else
    sha="nogit"
fi
tags=("$version" "git-$sha" "latest")

# --- build (linux/amd64: SageMaker's x86 instances) -----------------------------------------
received() {  # bytes the running build step has downloaded (legacy builder), when visible
    local id image
    read -r id image < <(docker ps --latest --format '{{.ID}} {{.Image}}' 2>/dev/null) || return 0
    [[ "$image" =~ ^(sha256:)?[0-9a-f]{12,}$ ]] || return 0   # an intermediate build container
    local net
    net="$(docker stats --no-stream --format '{{.NetIO}}' "$id" 2>/dev/null)" || return 0
    [[ -n "$net" ]] && printf '; received %s so far' "${net%% /*}"
}
watch_build() {  # watch_build NAME LOG PID: a progress line per new step, and every N seconds
    local name="$1" log="$2" pid="$3" start=$SECONDS last=-999 step="" now
    while kill -0 "$pid" 2>/dev/null; do
        now="$(grep -E '^(Step [0-9]+/[0-9]+ :|#[0-9]+ \[)' "$log" 2>/dev/null | tail -n 1 | cut -c1-110 || true)"
        if { [[ "$now" != "$step" ]] && (( SECONDS - last >= 5 )); } \
                || (( SECONDS - last >= progress_seconds )); then
            step="$now"; last=$SECONDS
            progress "[$name, $(( SECONDS - start ))s] ${step:-starting}$(received)"
        fi
        sleep 1
    done
}
build() {  # build TAG DOCKERFILE [build args...]
    local tag="$1" file="$2"; shift 2
    local log="$log_dir/${file#Dockerfile.}.log" status=0
    progress "building $tag ($file; full log: $log)"
    BUILDKIT_PROGRESS=plain docker build --platform linux/amd64 -f "$repo/docker/$file" -t "$tag" \
        --build-arg "LOCK_SUFFIX=${LOCK_SUFFIX:-}" --build-arg "TORCH_INDEX_URL=${TORCH_INDEX_URL:-}" \
        "$@" ${extra_build[@]+"${extra_build[@]}"} "$repo" >"$log" 2>&1 &
    local pid=$!
    watch_build "${file#Dockerfile.}" "$log" "$pid"
    wait "$pid" || status=$?
    if [[ $status -ne 0 ]]; then
        tail -n 30 "$log" >&2
        die "building $tag failed (exit $status; full log: $log)"
    fi
}
resolve_bake() {  # auto -> 1 when the weights can be downloaded, else 0 (said out loud)
    [[ "$bake" == auto ]] || return 0
    if command -v curl >/dev/null \
            && ! curl -sfI -m 10 -o /dev/null https://download.pytorch.org/models/resnet50-11ad3fa6.pth; then
        bake=0
        say "download.pytorch.org does not answer: the training image gets no ImageNet weights" \
            "(weights=auto trains from random init; BAKE_IMAGENET_WEIGHTS=1 to insist)"
    else
        bake=1
    fi
}
if [[ $build -eq 1 ]]; then
    mkdir -p "$log_dir"
    os_image="$("$repo/docker/os_image.sh" "$os_image")" || die "no OS base image (see above)"
    resolve_bake
    build "$base_image" Dockerfile.base --build-arg "BASE_IMAGE=$os_image"
    build "$train_repo:latest" Dockerfile.train --build-arg "BASE_IMAGE=$base_image" \
        --build-arg "BAKE_IMAGENET_WEIGHTS=$bake"
    build "$serve_repo:latest" Dockerfile.serve --build-arg "BASE_IMAGE=$base_image"
fi
# What the training image really holds (its label, set from the build argument).
imagenet="$(docker image inspect --format \
    '{{index .Config.Labels "sagemaker-resnet50.imagenet-weights"}}' "$train_repo:latest" 2>/dev/null || true)"
case "$imagenet" in 1) imagenet=true ;; 0) imagenet=false ;; *) imagenet=null ;; esac
for repo_name in "$train_repo" "$serve_repo"; do
    for tag in "${tags[@]}"; do docker tag "$repo_name:latest" "$repo_name:$tag"; done
done

if [[ $push -eq 0 ]]; then
    say "built (not pushed): $train_repo:{${tags[*]}} $serve_repo:{${tags[*]}}"
    exit 0
fi

# --- registry: ECR (account from STS, region from AWS_REGION or the AWS config) or --registry -
ecr_repository() {  # create if missing; on every run: scan on push, immutable tags but two
    local name="$1"
    if ! aws ecr describe-repositories --region "$region" --repository-names "$name" >/dev/null 2>&1; then
        say "creating ECR repository $name"
        aws ecr create-repository --region "$region" --repository-name "$name" \
            --image-scanning-configuration scanOnPush=true >/dev/null
    fi
    # Set on existing repositories too: a repository made by hand or by an older version of
    # this script gets the same guarantees.
    aws ecr put-image-scanning-configuration --region "$region" --repository-name "$name" \
        --image-scanning-configuration scanOnPush=true >/dev/null
    aws ecr put-image-tag-mutability --region "$region" --repository-name "$name" \
        --image-tag-mutability IMMUTABLE_WITH_EXCLUSION \
        --image-tag-mutability-exclusion-filters filterType=WILDCARD,filter=latest \
        'filterType=WILDCARD,filter=*-dirty' >/dev/null
}
if [[ ${ecr:-0} -eq 1 ]]; then
    for repo_name in "$train_repo" "$serve_repo"; do ecr_repository "$repo_name"; done
    # The password goes from the AWS CLI to docker through a pipe only: never echoed or logged.
    aws ecr get-login-password --region "$region" \
        | docker login --username AWS --password-stdin "$registry" >/dev/null
    say "logged in to $registry"
fi

push_tag() {  # push_tag REF: progress unless --quiet; a taken immutable version tag is no error
    local ref="$1" out status=0
    progress "pushing $ref"
    if [[ $quiet -eq 1 ]]; then
        out="$(docker push "$ref" 2>&1)" || status=$?
    else
        out="$(docker push "$ref" 2>&1 | tee /dev/stderr)" || status=$?
    fi
    [[ $status -eq 0 ]] && return 0
    if [[ "$ref" == *":$version" && "$out" == *"already exists"* ]]; then
        say "warning: $ref already names another image and ECR keeps tags immutable:" \
            "bump the version in pyproject.toml to publish a new one (git-$sha was pushed)"
        return 0
    fi
    [[ $quiet -eq 1 ]] && printf '%s\n' "$out" >&2
    die "docker push $ref failed"
}
scan_findings() {  # scan_findings REPO: ECR's scan-on-push result for the git-<sha> tag
    local name="$1" counts
    [[ ${ecr:-0} -eq 1 && $scan_wait -eq 1 ]] || return 0
    say "waiting for ECR's scan of $name:git-$sha (--no-scan-wait to skip)"
    if ! aws ecr wait image-scan-complete --region "$region" --repository-name "$name" \
            --image-id "imageTag=git-$sha"; then
        say "warning: no scan result for $name:git-$sha yet; see the ECR console"
        return 0
    fi
    counts="$(aws ecr describe-image-scan-findings --region "$region" --repository-name "$name" \
        --image-id "imageTag=git-$sha" --query 'imageScanFindings.findingSeverityCounts' \
        --output json)"
    say "scan findings for $name:git-$sha: $(printf '%s' "$counts" | tr -d ' \n')"
}

# Plain variables, not an associative array: macOS ships bash 3.2.
uri_train="" uri_serve=""
for role in train serve; do
    repo_name="$train_repo"; [[ $role == serve ]] && repo_name="$serve_repo"
    # git-<sha> first: it is the tag image_uris.json names.
    for tag in "git-$sha" "$version" latest; do
        docker tag "$repo_name:latest" "$registry/$repo_name:$tag"
        push_tag "$registry/$repo_name:$tag"
    done
    printf -v "uri_$role" '%s' "$registry/$repo_name:git-$sha"
    scan_findings "$repo_name"
done

cat >"$uris_file" <<EOF
{
  "train": "${uri_train}",
  "serve": "${uri_serve}",
  "imagenet_weights": $imagenet,
  "version": "$version",
  "git_sha": "$sha"
}
EOF
say "wrote $uris_file"
echo "train image: ${uri_train}"
echo "serve image: ${uri_serve}"
