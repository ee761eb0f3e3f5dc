"""The artifact's files checked against the manifest's hashes, without torch: the serving
entry process (multi-model loads, container_serve/model_registry.py) checks them too."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from model_artifact.manifest import ArtifactError


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified_file(path: Path, sha256: str, what: str) -> Path:
    """``path`` if it exists and (when the manifest gives one) has that sha256; else
    ArtifactError naming the file. ``what`` says which file the manifest meant."""
    if not path.is_file():
        raise ArtifactError(f"{path}: {what} named by the manifest is missing")
    if sha256 and file_sha256(path) != sha256:
        raise ArtifactError(f"{path}: sha256 does not match the manifest")
    return path
