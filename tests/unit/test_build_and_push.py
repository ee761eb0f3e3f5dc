"""build_and_push.sh at the AWS CLI / Docker boundary: stand-in `aws` and `docker` on PATH
record every call; the ECR password is a sentinel that must reach `docker login` on stdin only.
(The real push to a local registry is a container test.)"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SENTINEL = "SENTINEL-ECR-PASSWORD-7f3a9c"
ACCOUNT, REGION = "123456789012", "eu-west-1"
REGISTRY = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"

FAKE_DOCKER = """#!/usr/bin/env bash
printf '%s\\n' "docker $*" >> "$CALLS"
if [[ "$1" == login ]]; then printf '%s' "$(cat)" > "$CALLS.stdin"; echo "Login Succeeded"; fi
if [[ "$1 $2" == "image inspect" && "$*" == *imagenet-weights* ]]; then echo "${FAKE_LABEL:-1}"; fi
if [[ "$1" == build ]]; then
  echo "Step 1/2 : FROM base"; echo "Step 2/2 : RUN true"; sleep "${FAKE_BUILD_SECONDS:-0}"
fi
if [[ "$1" == push && -n "${TAKEN_TAG:-}" && "$2" == *":$TAKEN_TAG" ]]; then
  echo "tag invalid: The image tag '$TAKEN_TAG' already exists in the repository and cannot be" \\
       "overwritten because the repository is immutable." >&2
  exit 1
fi
exit 0
"""
FAKE_AWS = f"""#!/usr/bin/env bash
printf '%s\\n' "aws $*" >> "$CALLS"
case "$1 $2" in
  "sts get-caller-identity") echo {ACCOUNT} ;;
  "configure get") exit 1 ;;
  "ecr describe-repositories") [[ "$*" == *sagemaker-resnet50-serve* ]] || exit 254 ;;
  "ecr create-repository") echo '{{"repository": {{}}}}' ;;
  "ecr get-login-password") echo {SENTINEL} ;;
  "ecr describe-image-scan-findings") echo '{{"HIGH": 2, "LOW": 7}}' ;;
esac
"""


def _run(tmp_path: Path, *args: str, tools=("docker", "aws"), env=None, repo: Path = REPO):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in (("docker", FAKE_DOCKER), ("aws", FAKE_AWS)):
        if name in tools:
            (bin_dir / name).write_text(body)
            (bin_dir / name).chmod(0o755)
    calls = tmp_path / "calls"
    # Only the basic tools the script needs: no real docker or aws can be found.
    basic = tmp_path / "basic"
    basic.mkdir(exist_ok=True)
    for tool in ("bash", "cat", "cut", "dirname", "git", "grep", "head", "mkdir", "sed", "sleep",
                 "tail", "tee", "tr"):
        if not (basic / tool).exists():
            (basic / tool).symlink_to(shutil.which(tool))
    run_env = {"PATH": f"{bin_dir}:{basic}", "CALLS": str(calls), "HOME": str(tmp_path),
               "IMAGE_URIS_FILE": str(tmp_path / "image_uris.json"),
               "BUILD_LOG_DIR": str(tmp_path / "logs"), **(env or {})}
    proc = subprocess.run(["bash", str(repo / "build_and_push.sh"), *args], env=run_env,
                          capture_output=True, text=True, timeout=60)
    lines = calls.read_text().splitlines() if calls.exists() else []
    return proc, lines


def test_ecr_push_calls_and_password_handling(tmp_path):
    proc, calls = _run(tmp_path, env={"AWS_REGION": REGION})
    assert proc.returncode == 0, proc.stderr
    aws = [c for c in calls if c.startswith("aws ")]
    assert aws[0] == "aws sts get-caller-identity --query Account --output text"
    assert (f"aws ecr create-repository --region {REGION} --repository-name "
            "sagemaker-resnet50-train --image-scanning-configuration scanOnPush=true") in aws
    assert not any("create-repository" in c and "serve" in c for c in aws)  # already exists
    for name in ("train", "serve"):  # also on existing repositories, on every run
        repo = f"--region {REGION} --repository-name sagemaker-resnet50-{name}"
        assert (f"aws ecr put-image-scanning-configuration {repo} "
                "--image-scanning-configuration scanOnPush=true") in aws
        assert (f"aws ecr put-image-tag-mutability {repo} --image-tag-mutability "
                "IMMUTABLE_WITH_EXCLUSION --image-tag-mutability-exclusion-filters "
                "filterType=WILDCARD,filter=latest filterType=WILDCARD,filter=*-dirty") in aws
        # The scan findings are read back and shown after the push.
        waits = [c for c in aws if c.startswith(f"aws ecr wait image-scan-complete {repo}")]
        assert len(waits) == 1 and "--image-id imageTag=git-" in waits[0]
        assert any(c.startswith(f"aws ecr describe-image-scan-findings {repo}") for c in aws)
    assert proc.stderr.count('scan findings for sagemaker-resnet50-') == 2
    assert '{"HIGH":2,"LOW":7}' in proc.stderr
    assert f"aws ecr get-login-password --region {REGION}" in aws
    assert f"docker login --username AWS --password-stdin {REGISTRY}" in calls
    assert (tmp_path / "calls.stdin").read_text().strip() == SENTINEL
    assert SENTINEL not in proc.stdout + proc.stderr
    assert not any(SENTINEL in c for c in calls)  # never an argument

    builds = [c for c in calls if c.startswith("docker build")]
    assert len(builds) == 3 and all("--platform linux/amd64" in c for c in builds)
    pushes = [c.split()[-1] for c in calls if c.startswith("docker push")]
    tag = re.compile(rf"{re.escape(REGISTRY)}/sagemaker-resnet50-(train|serve):"
                     r"(0\.1\.0|git-[0-9a-f]{12}(-dirty)?|latest)$")
    assert len(pushes) == 6 and all(tag.match(p) for p in pushes)

    uris = json.loads((tmp_path / "image_uris.json").read_text())
    assert re.fullmatch(rf"{re.escape(REGISTRY)}/sagemaker-resnet50-train:git-[0-9a-f]{{12}}"
                        r"(-dirty)?", uris["train"])
    assert uris["serve"] == uris["train"].replace("-train:", "-serve:")
    assert uris["imagenet_weights"] is True  # the training image's label, read back
    assert f"train image: {uris['train']}" in proc.stdout


def test_region_missing_fails_before_any_push(tmp_path):
    proc, calls = _run(tmp_path)
    assert proc.returncode == 1
    assert "no AWS region: set AWS_REGION" in proc.stderr
    assert not any(c.startswith(("docker push", "docker build")) for c in calls)


@pytest.mark.parametrize(("missing", "message"), [
    ("docker", "error: docker not found: install Docker"),
    ("aws", "error: AWS CLI not found: install AWS CLI v2"),
])
def test_missing_tools_fail_clearly_before_building(tmp_path, missing, message):
    tools = {"docker", "aws"} - {missing}
    proc, calls = _run(tmp_path, tools=tools, env={"AWS_REGION": REGION})
    assert proc.returncode == 1 and message in proc.stderr
    assert not any(c.startswith("docker build") for c in calls)


def test_no_push_and_other_registry_make_no_aws_calls(tmp_path):
    proc, calls = _run(tmp_path, "--no-push")
    assert proc.returncode == 0, proc.stderr
    assert not any(c.startswith(("aws ", "docker push", "docker login")) for c in calls)
    assert not (tmp_path / "image_uris.json").exists()

    proc, calls = _run(tmp_path, "--registry", "127.0.0.1:5000", tools=("docker",))
    assert proc.returncode == 0, proc.stderr
    uris = json.loads((tmp_path / "image_uris.json").read_text())
    assert uris["serve"].startswith("127.0.0.1:5000/sagemaker-resnet50-serve:git-")


def test_a_taken_version_tag_is_reported_not_fatal(tmp_path):
    """ECR keeps the version tag immutable: a second build of the same version pushes its
    git-<sha> and latest, and says how to publish a new version."""
    proc, calls = _run(tmp_path, "--no-scan-wait",
                       env={"AWS_REGION": REGION, "TAKEN_TAG": "0.1.0", "FAKE_LABEL": "0"})
    assert proc.returncode == 0, proc.stderr
    assert "already names another image" in proc.stderr and "bump the version" in proc.stderr
    pushes = [c.split()[-1] for c in calls if c.startswith("docker push")]
    assert sum(p.endswith(":latest") for p in pushes) == 2
    assert not any(c.startswith("aws ecr wait") for c in calls)  # --no-scan-wait
    assert json.loads((tmp_path / "image_uris.json").read_text())["imagenet_weights"] is False


def test_other_push_failures_stop_the_script(tmp_path):
    proc, _ = _run(tmp_path, "--registry", "127.0.0.1:5000", tools=("docker",),
                   env={"TAKEN_TAG": "latest"})
    assert proc.returncode == 1 and "docker push 127.0.0.1:5000/" in proc.stderr


def test_build_progress_names_each_step_and_the_log(tmp_path):
    # A build long enough for the watcher: a new step is announced 5 s after the last line.
    proc, _ = _run(tmp_path, "--no-push", env={"FAKE_BUILD_SECONDS": "7"})
    assert proc.returncode == 0, proc.stderr
    for name in ("base", "train", "serve"):
        assert f"(Dockerfile.{name}; full log: {tmp_path / 'logs' / name}.log)" in proc.stderr
        assert (tmp_path / "logs" / f"{name}.log").read_text().startswith("Step 1/2")
    assert proc.stderr.count("] Step 2/2 : RUN true") == 3  # each build's step, as it runs
    quiet, _ = _run(tmp_path, "--no-push", "--quiet")
    assert quiet.returncode == 0 and "full log" not in quiet.stderr and "Step" not in quiet.stderr


def test_untracked_files_the_images_ship_mark_the_tag_dirty(tmp_path):
    """The dirty check counts files .dockerignore sends into the build, tracked or not."""
    repo = tmp_path / "repo"
    (repo / "docker").mkdir(parents=True)
    for rel in ("build_and_push.sh", "pyproject.toml", "docker/os_image.sh", "docker/images.env"):
        shutil.copy2(REPO / rel, repo / rel)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    proc, _ = _run(tmp_path, "--registry", "127.0.0.1:5000", tools=("docker",), repo=repo)
    assert proc.returncode == 0, proc.stderr
    clean = json.loads((tmp_path / "image_uris.json").read_text())["git_sha"]
    assert not clean.endswith("-dirty")

    (repo / "container_serve").mkdir()
    (repo / "container_serve" / "new_module.py").write_text("x = 1\n")  # untracked, shipped
    (repo / "notes.txt").write_text("not in the build context\n")
    proc, _ = _run(tmp_path, "--registry", "127.0.0.1:5000", tools=("docker",), repo=repo)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "image_uris.json").read_text())["git_sha"] == f"{clean}-dirty"
    assert "1 changed or untracked file(s)" in proc.stderr


def test_script_is_strict_and_shellcheck_clean():
    text = (REPO / "build_and_push.sh").read_text()
    assert "set -euo pipefail" in text and "set -x" not in text
    # A missing shellcheck is a failure, not a pass: dev/test.sh installs it before the tests.
    assert shutil.which("shellcheck"), "shellcheck is not installed (apt-get install shellcheck)"
    assert subprocess.run(["shellcheck", "-x", "build_and_push.sh"], cwd=REPO).returncode == 0
