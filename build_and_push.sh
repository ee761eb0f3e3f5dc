#!/usr/bin/env bash
# Build the training and serving images and push them to Amazon ECR (or any registry).
#
#   ./build_and_push.sh                   build, create the ECR repositories if missing (scan on
#                                         push), log in, push, write image_uris.json
#   ./build_and_push.sh --no-push         build only (local tags, no AWS calls)
#   ./build_and_push.sh --registry HOST   push to HOST[:PORT] instead of ECR (no AWS calls)
#   ./build_and_push.sh --skip-build      push the images already built (e.g. by a CI step)
#
# Tags: <version> (pyproject.toml), git-<sha> (immutable; -dirty when the tree has uncommitted
# changes) and latest. image_uris.json gets the git-<sha> URIs; the drivers in scripts/ read it.
#
# Environment (defaults):
#   AWS_REGION              else `aws configure get region`
#   OS_IMAGE                debian:bookworm-slim (docker/build_base_os.sh makes an air-gapped one)
#   BAKE_IMAGENET_WEIGHTS   1: torchvision's ImageNet ResNet50 weights in the training image
#   TORCH_INDEX_URL, LOCK_SUFFIX   CPU-only torch variant (see docker/Dockerfile.base)
#   TRAIN_REPO, SERVE_REPO  sagemaker-resnet50-train, sagemaker-resnet50-serve
#   BASE_IMAGE              sagemaker-resnet50-base:latest (local only, never pushed)
#   IMAGE_URIS_FILE         image_uris.json in this folder
#   DOCKER_BUILD_ARGS       extra `docker build` arguments (e.g. --pull, --no-cache)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
push=1
build=1
registry=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --no-push) push=0; shift ;;
        --skip-build) build=0; shift ;;
        --registry) [[ $# -ge 2 ]] || { echo "error: --registry needs HOST[:PORT]" >&2; exit 2; }
                    registry="$2"; shift 2 ;;
        -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

os_image="${OS_IMAGE:-debian:bookworm-slim}"
base_image="${BASE_IMAGE:-sagemaker-resnet50-base:latest}"
train_repo="${TRAIN_REPO:-sagemaker-resnet50-train}"
serve_repo="${SERVE_REPO:-sagemaker-resnet50-serve}"
uris_file="${IMAGE_URIS_FILE:-$repo/image_uris.json}"
read -r -a extra_build <<<"${DOCKER_BUILD_ARGS:-}"

die() { echo "error: $*" >&2; exit 1; }
say() { echo "build_and_push: $*" >&2; }

command -v docker >/dev/null || die "docker not found: install Docker (https://docs.docker.com/engine/install/)"
docker info >/dev/null 2>&1 || die "no Docker daemon answers: start Docker (e.g. 'sudo systemctl start docker')"
if [[ $push -eq 1 && -z "$registry" ]]; then
    command -v aws >/dev/null || die "AWS CLI not found: install AWS CLI v2 (https://docs.aws.amazon.com/cli/) or use --registry HOST / --no-push"
fi

version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/pyproject.toml" | head -1)"
[[ -n "$version" ]] || die "no version in pyproject.toml"
if sha="$(git -C "$repo" rev-parse --short=12 HEAD 2>/dev/null)"; then
    [[ -z "$(git -C "$repo" status --porcelain --untracked-files=no)" ]] || sha="$sha-dirty"
else
    sha="nogit"
fi
tags=("$version" "git-$sha" "latest")

# --- build (linux/amd64: SageMaker's x86 instances) -----------------------------------------
build() {  # build TAG DOCKERFILE [build args...]
    local tag="$1" file="$2"; shift 2
    say "building $tag ($file)"
    docker build --platform linux/amd64 -f "$repo/docker/$file" -t "$tag" \
        --build-arg "LOCK_SUFFIX=${LOCK_SUFFIX:-}" --build-arg "TORCH_INDEX_URL=${TORCH_INDEX_URL:-}" \
        "$@" "${extra_build[@]}" "$repo"
}
if [[ $build -eq 1 ]]; then
    build "$base_image" Dockerfile.base --build-arg "BASE_IMAGE=$os_image"
    build "$train_repo:latest" Dockerfile.train --build-arg "BASE_IMAGE=$base_image" \
        --build-arg "BAKE_IMAGENET_WEIGHTS=${BAKE_IMAGENET_WEIGHTS:-1}"
    build "$serve_repo:latest" Dockerfile.serve --build-arg "BASE_IMAGE=$base_image"
fi
for repo_name in "$train_repo" "$serve_repo"; do
    for tag in "${tags[@]}"; do docker tag "$repo_name:latest" "$repo_name:$tag"; done
done

if [[ $push -eq 0 ]]; then
    say "built (not pushed): $train_repo:{${tags[*]}} $serve_repo:{${tags[*]}}"
    exit 0
fi

# --- registry: ECR (account from STS, region from AWS_REGION or the AWS config) or --registry -
if [[ -z "$registry" ]]; then
    region="${AWS_REGION:-$(aws configure get region || true)}"
    [[ -n "$region" ]] || die "no AWS region: set AWS_REGION or run 'aws configure set region REGION'"
    account="$(aws sts get-caller-identity --query Account --output text)" \
        || die "cannot read the AWS account (aws sts get-caller-identity): check your credentials"
    suffix="amazonaws.com"
    [[ "$region" == cn-* ]] && suffix="amazonaws.com.cn"
    registry="$account.dkr.ecr.$region.$suffix"
    for repo_name in "$train_repo" "$serve_repo"; do
        if ! aws ecr describe-repositories --region "$region" --repository-names "$repo_name" >/dev/null 2>&1; then
            say "creating ECR repository $repo_name (scan on push)"
            aws ecr create-repository --region "$region" --repository-name "$repo_name" \
                --image-scanning-configuration scanOnPush=true >/dev/null
        fi
    done
    # The password goes from the AWS CLI to docker through a pipe only: never echoed or logged.
    aws ecr get-login-password --region "$region" \
        | docker login --username AWS --password-stdin "$registry" >/dev/null
    say "logged in to $registry"
fi

declare -A uri
for role in train serve; do
    repo_name="$train_repo"; [[ $role == serve ]] && repo_name="$serve_repo"
    for tag in "${tags[@]}"; do
        docker tag "$repo_name:latest" "$registry/$repo_name:$tag"
        say "pushing $registry/$repo_name:$tag"
        docker push "$registry/$repo_name:$tag" >/dev/null
    done
    uri[$role]="$registry/$repo_name:git-$sha"
done

cat >"$uris_file" <<EOF
{
  "train": "${uri[train]}",
  "serve": "${uri[serve]}",
  "version": "$version",
  "git_sha": "$sha"
}
EOF
say "wrote $uris_file"
echo "train image: ${uri[train]}"
echo "serve image: ${uri[serve]}"
