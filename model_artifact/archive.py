"""Safe extraction of model archives (SageMaker's ``model.tar.gz``) and other tarballs.

``tarfile.extractall`` trusts the archive: a member named ``/etc/cron.d/x`` or ``../../x``, or
a symlink/hard link pointing outside, writes wherever the archive's author wants. A model
archive comes from S3 or a colleague; treat it as untrusted input. :func:`safe_extract`
checks **every** member before writing anything (all or nothing) and refuses:

- absolute names and names with a ``..`` component (or a NUL byte, or an empty name);
- symbolic links and hard links (a model artifact never needs them);
- device files, FIFOs and other special members;
- archives with more than ``max_members`` members or ``max_bytes`` of file data (tar bombs);
- names that would resolve outside ``dest`` through a symlink already present there.

Then it extracts with Python's ``"data"`` filter as a second line of defence, which also drops
set-uid bits and ownership. SageMaker's own format is a gzip tar of the model directory's files
at the top level (``model.pt``, ``manifest.json``) or under ``./``; both are accepted.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
from pathlib import Path

DEFAULT_MAX_MEMBERS = 10_000
DEFAULT_MAX_BYTES = 8 * 1024**3  # 8 GiB of file data: far above any ResNet50 artifact


class UnsafeArchiveError(ValueError):
    """The archive holds a member we refuse to extract; the message names it."""


def _check_name(name: str) -> str:
    """The member's normalised relative POSIX path, or UnsafeArchiveError."""
    if not name or "\x00" in name:
        raise UnsafeArchiveError(f"member {name!r}: empty name or NUL byte")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"member {name!r}: absolute path")
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        raise UnsafeArchiveError(f"member {name!r}: '..' in the path")
    normal = posixpath.normpath(name)
    if normal.startswith("/") or normal == ".." or normal.startswith("../"):
        raise UnsafeArchiveError(f"member {name!r}: outside the destination")
    return normal


def check_members(
    tar: tarfile.TarFile,
    *,
    max_members: int = DEFAULT_MAX_MEMBERS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> list[tarfile.TarInfo]:
    """Every member, checked (see the module docstring); raises on the first unsafe one."""
    members: list[tarfile.TarInfo] = []
    total = 0
    for member in tar:  # streams: a huge member list fails at max_members, not at memory
        if len(members) >= max_members:
            raise UnsafeArchiveError(f"more than {max_members} members")
        _check_name(member.name)
        if member.issym() or member.islnk():
            kind = "symbolic link" if member.issym() else "hard link"
            raise UnsafeArchiveError(
                f"member {member.name!r}: {kind} to {member.linkname!r} (links are refused)"
            )
        if not (member.isfile() or member.isdir()):
            raise UnsafeArchiveError(f"member {member.name!r}: not a regular file or directory")
        total += member.size
        if total > max_bytes:
            raise UnsafeArchiveError(f"more than {max_bytes} bytes of file data")
        members.append(member)
    return members


def safe_extract(
    tar_path: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    max_members: int = DEFAULT_MAX_MEMBERS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> list[Path]:
    """Extract ``tar_path`` (any compression tarfile reads) into ``dest`` after checking it.

    Nothing is written unless every member passes. Returns the extracted regular files.
    Raises UnsafeArchiveError for a refused member, tarfile.TarError for a corrupt archive.
    """
    dest_path = Path(dest)
    dest_path.mkdir(parents=True, exist_ok=True)
    root = dest_path.resolve()
    with tarfile.open(tar_path, mode="r:*") as tar:
        members = check_members(tar, max_members=max_members, max_bytes=max_bytes)
        for member in members:
            target = (root / _check_name(member.name)).resolve()
            if target != root and root not in target.parents:
                raise UnsafeArchiveError(
                    f"member {member.name!r}: resolves outside {root} (a link in the destination)"
                )
        tar.extractall(root, members=members, filter="data")
    return [root / _check_name(m.name) for m in members if m.isfile()]
