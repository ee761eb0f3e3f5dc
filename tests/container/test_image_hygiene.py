"""No credentials, caches or host CAs in the layers the product Dockerfiles add.

Scans ``docker history --no-trunc`` (every build step's command line) and the layer tarballs
of ``docker save`` of the training and serving images for AWS access keys (``AKIA...``),
``aws_secret_access_key``, private keys (``-----BEGIN ... PRIVATE KEY-----``), ``.netrc``,
``.aws/credentials``, docker ``config.json``, pip caches (``root/.cache/pip``) and the host's
extra CA certificates (``/usr/local/share/ca-certificates/``).

Only the layers above the OS base are scanned: the locally built OS image
(docker/build_base_os.sh, ``OS_IMAGE``, default sagemaker-resnet50-os:bookworm) adds the host's
CAs on purpose so that pip works behind this machine's TLS-inspecting proxy; real builds use
debian:bookworm-slim. Layers are recognised by their diff IDs (``docker image inspect``).

``test_the_scan_finds_planted_secrets`` is the positive control: a throw-away build with a
canary key pair, a top-level ``.netrc`` and credentials in a URL build argument, each of which
the same scan must report.

Skips cleanly without Docker or the images (CONTAINER_TESTS_REQUIRED=1 makes that a failure).
Streams ``docker save`` (a few GB, no disk): a few minutes on a 2-core machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

from job_contract.images import local_image
from tests.container.conftest import require_docker

TRAIN_IMAGE = local_image("train")
SERVE_IMAGE = local_image("serve")
OS_IMAGE = os.environ.get("OS_IMAGE", "sagemaker-resnet50-os:bookworm")
IMAGES = (TRAIN_IMAGE, SERVE_IMAGE)
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
CONTENT_LIMIT = 4 << 20  # secrets are small files; larger ones are checked by name only

SECRET_PATTERNS = {
    "AWS access key id": re.compile(rb"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "aws_secret_access_key": re.compile(rb"aws_secret_access_key\s*[=:]\s*[A-Za-z0-9/+]{30,}",
                                        re.IGNORECASE),
    "private key": re.compile(rb"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED )?PRIVATE KEY-----"
                              rb"\s*\n[A-Za-z0-9+/=\n]{64,}"),
}
# Documentation placeholders shipped inside packages (botocore, the AWS SDKs).
ALLOWED_SECRETS = re.compile(rb"AKIAIOSFODNN7EXAMPLE|AKIAI44QH8DHBEXAMPLE|EXAMPLEKEY")
# Public test fixtures that packages ship: botocore's API examples (made-up access key ids),
# the self-signed test keys of gevent's and future's test suites.
ALLOWED_SECRET_FILES = re.compile(
    r"site-packages/botocore/data/.*/examples-1\.json$|site-packages/[^/]+/(.*/)?tests?/[^/]+\.(pem|key)$"
)
# A trust bundle that update-ca-certificates regenerated (e.g. apt installing ca-certificates
# in Dockerfile.base) lists the CAs the OS base already holds; that is not a product layer
# adding them. Any other file holding a host CA (a COPY, certifi's cacert.pem, ...) fails.
REGENERATED_BUNDLE = "etc/ssl/certs/ca-certificates.crt"
BAD_PATHS = re.compile(r"(^|/)(\.netrc|\.aws/credentials|\.docker/config\.json|\.git-credentials"
                       r"|\.pypirc)$|(^|/)root/\.cache/pip/")
HISTORY_PATTERNS = {
    **SECRET_PATTERNS,
    "credential in a build argument": re.compile(
        rb"(AWS_SECRET_ACCESS_KEY|AWS_SESSION_TOKEN|PASSWORD|TOKEN)=\S{8,}", re.IGNORECASE),
    ".netrc": re.compile(rb"\.netrc"),
    "credentials in a URL": re.compile(rb"\b[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@"),
}

pytestmark = pytest.mark.container


@pytest.fixture(scope="module", autouse=True)
def _docker_ready() -> None:
    require_docker(*IMAGES)


def diff_ids(image: str) -> list[str]:
    proc = subprocess.run(["docker", "image", "inspect", "-f", "{{json .RootFS.Layers}}", image],
                          capture_output=True, text=True)
    return json.loads(proc.stdout) if proc.returncode == 0 else []


def product_layers(image: str) -> list[str]:
    """Diff IDs of ``image`` above the OS base (all of them if the OS image is absent)."""
    layers, base = diff_ids(image), diff_ids(OS_IMAGE)
    if base and layers[: len(base)] == base:
        return layers[len(base):]
    return layers


def host_ca_bodies() -> dict[str, bytes]:
    """One distinctive base64 line (the middle one of the PEM, 64 chars) of each host extra CA:
    bundles (ca-certificates.crt) copy the PEM lines verbatim."""
    bodies = {}
    for path in sorted(HOST_CA_DIR.rglob("*.crt")) if HOST_CA_DIR.is_dir() else []:
        text = path.read_bytes()
        for i, block in enumerate(re.findall(
                rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", text, re.DOTALL)):
            lines = [line.strip() for line in block.splitlines() if len(line.strip()) >= 48]
            if lines:
                bodies[f"{path.name}#{i}"] = lines[len(lines) // 2]
    return bodies


class _Hashing:
    """File-like wrapper that hashes what is read (a legacy ``docker save`` names layers by
    an id, not by the diff ID the image config lists)."""

    def __init__(self, raw) -> None:
        self.raw, self.hash = raw, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.hash.update(data)
        return data

    def drain(self) -> str:
        while self.read(1 << 20):
            pass
        return "sha256:" + self.hash.hexdigest()


def _scan_layer(stream, cas: dict[str, bytes]) -> list[str]:
    findings = []
    with tarfile.open(fileobj=stream, mode="r|") as layer:
        for member in layer:
            name = member.name.removeprefix("./")  # not lstrip: ".netrc" would lose its dot
            if BAD_PATHS.search(name):
                findings.append(f"{name}: forbidden path")
            if not member.isfile() or member.size > CONTENT_LIMIT:
                continue
            data = layer.extractfile(member).read()
            for label, pattern in SECRET_PATTERNS.items():
                for match in pattern.finditer(data):
                    if not (ALLOWED_SECRETS.search(match.group(0))
                            or ALLOWED_SECRET_FILES.search(name)):
                        findings.append(f"{name}: {label}")
            for ca_name, body in cas.items():
                if body in data:
                    findings.append(f"{name}: contains the host CA {ca_name}")
    return findings


@cache
def scan_saved_layers(images: tuple[str, ...] = IMAGES) -> dict[str, list[str]]:
    """Findings per diff ID, for every layer of ``images`` (shared layers scanned once)."""
    cas = host_ca_bodies()
    proc = subprocess.Popen(["docker", "save", *images], stdout=subprocess.PIPE)
    results: dict[str, list[str]] = {}
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as saved:
            for member in saved:
                oci = re.fullmatch(r"blobs/sha256/([0-9a-f]{64})", member.name)
                if not (member.name.endswith("/layer.tar") or oci) or not member.isfile():
                    continue
                stream = _Hashing(saved.extractfile(member))
                try:
                    findings = _scan_layer(stream, cas)
                except tarfile.ReadError:  # an OCI blob that is a config or manifest
                    findings = []
                digest = stream.drain()
                results[f"sha256:{oci.group(1)}" if oci else digest] = findings
    finally:
        proc.stdout.close()
        assert proc.wait(timeout=600) == 0, "docker save failed"
    return results


def history_findings(image: str) -> list[str]:
    proc = subprocess.run(["docker", "history", "--no-trunc", "--format", "{{.CreatedBy}}",
                           image], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [f"{label}: {line[:200]!r}" for line in proc.stdout.splitlines()
            for label, pattern in HISTORY_PATTERNS.items()
            if pattern.search(line) and not ALLOWED_SECRETS.search(line)]


@pytest.mark.parametrize("image", IMAGES)
def test_history_has_no_credentials(image: str) -> None:
    findings = history_findings(image)
    assert not findings, findings


def _canary_base() -> str:
    """A small local image to plant secrets on: the OS base, else debian:bookworm-slim."""
    for image in (OS_IMAGE, "debian:bookworm-slim"):
        if diff_ids(image):
            return image
    reason = f"neither {OS_IMAGE} nor debian:bookworm-slim is present to build a canary on"
    if os.environ.get("CONTAINER_TESTS_REQUIRED") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def canary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throw-away image built with what the scan must find: a canary AWS key pair in a
    file, a top-level /.netrc, and credentials in a URL passed as a build argument."""
    base, tag = _canary_base(), f"pytest-hygiene-canary-{uuid.uuid4().hex[:8]}:latest"
    context = tmp_path_factory.mktemp("canary")
    key_id = "AKIA" + uuid.uuid4().hex[:16].upper()  # made here: no literal key in the repo
    secret = uuid.uuid4().hex + uuid.uuid4().hex[:8]
    (context / "config").write_text(f"[default]\naws_access_key_id = {key_id}\n"
                                    f"aws_secret_access_key = {secret}\n")
    (context / "netrc").write_text("machine pypi.example login canary password canary\n")
    (context / "Dockerfile").write_text(
        "ARG BASE\nFROM ${BASE}\nARG INDEX_URL\nCOPY netrc /.netrc\n"
        "COPY config /opt/canary/settings.ini\n"
        'RUN test -n "$INDEX_URL" && mkdir -p /opt/canary/empty\n')
    proc = subprocess.run(["docker", "build", "-q", "-t", tag, "--build-arg", f"BASE={base}",
                           "--build-arg", "INDEX_URL=https://canary:n0t-a-real-pw@pypi.example/"
                           "simple", str(context)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    try:
        yield tag
    finally:
        subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True)


def test_the_scan_finds_planted_secrets(canary: str) -> None:
    """Positive control on a real build: the scan that passes the product images finds each
    planted secret (a scan that finds nothing proves nothing)."""
    base = set(diff_ids(_canary_base()))
    results = scan_saved_layers((canary,))
    findings = [f for layer in diff_ids(canary) if layer not in base
                for f in results.get(layer, [])]
    assert ".netrc: forbidden path" in findings, findings
    assert "opt/canary/settings.ini: AWS access key id" in findings, findings
    assert "opt/canary/settings.ini: aws_secret_access_key" in findings, findings
    history = history_findings(canary)
    assert any(f.startswith("credentials in a URL:") for f in history), history


def test_host_ca_detection_works() -> None:
    """The CA check would see a host CA: the OS base (which adds them on purpose) has them."""
    if not host_ca_bodies() or not diff_ids(OS_IMAGE):
        pytest.skip("no host extra CAs or no locally built OS image to calibrate against")
    results = scan_saved_layers()
    base = diff_ids(OS_IMAGE)
    assert any("host CA" in f for layer in base for f in results.get(layer, [])), \
        "the scanner did not find the host CAs that the OS base holds on purpose"


@pytest.mark.parametrize("image", IMAGES)
def test_layers_above_the_os_base_are_clean(image: str) -> None:
    results = scan_saved_layers()
    layers = product_layers(image)
    assert layers, f"no layers found for {image}"
    missing = [layer for layer in layers if layer not in results]
    assert not missing, f"docker save did not yield layers {missing}"
    base_cas = {f for layer in diff_ids(OS_IMAGE) for f in results.get(layer, [])
                if f.startswith(f"{REGENERATED_BUNDLE}: contains the host CA")}
    findings = {layer[:19]: [f for f in results[layer] if f not in base_cas]
                for layer in layers}
    findings = {layer: found for layer, found in findings.items() if found}
    assert not findings, findings
