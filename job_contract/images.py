"""The local image names for host-side tools (tests, benches, local_test): read from
docker/images.env, the file the shell scripts source, so the names are defined once.

Only meaningful in a source checkout (the dev venvs install it in editable mode); nothing in
the images calls it.
"""

from __future__ import annotations

import os
from pathlib import Path

IMAGES_ENV = Path(__file__).resolve().parent.parent / "docker" / "images.env"


def _defaults() -> dict[str, str]:
    values = {}
    for line in IMAGES_ENV.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def local_image(kind: str) -> str:
    """``train`` / ``serve``: $TRAIN_IMAGE / $SERVE_IMAGE, else the name the build gives."""
    override = os.environ.get(f"{kind.upper()}_IMAGE")
    if override:
        return override
    values = _defaults()
    return f"{values[f'DEFAULT_{kind.upper()}_REPO']}:{values['LOCAL_TAG']}"
