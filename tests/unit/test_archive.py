"""model_artifact.archive.safe_extract: SageMaker's model.tar.gz extracts; hostile ones don't."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from model_artifact.archive import UnsafeArchiveError, safe_extract


def make_tar(path: Path, members: list[tuple[str, str, bytes | str]], mode: str = "w:gz") -> Path:
    """members: (name, kind, data) with kind file/dir/symlink/hardlink/fifo/chardev."""
    with tarfile.open(path, mode) as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
                         "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE,
                         "chardev": tarfile.CHRTYPE}[kind]
            if kind in ("symlink", "hardlink"):
                info.linkname = data
            tar.addfile(info)
    return path


def test_sagemaker_model_tar_gz_extracts(tmp_path: Path) -> None:
    """What SageMaker uploads: the model dir's files at the top level (or under ./)."""
    tar = make_tar(tmp_path / "model.tar.gz", [
        ("model.pt", "file", b"weights"),
        ("./manifest.json", "file", b"{}"),
        ("code", "dir", b""),
        ("code/inference.py", "file", b"x = 1\n"),
    ])
    dest = tmp_path / "out"
    files = safe_extract(tar, dest)
    assert (dest / "model.pt").read_bytes() == b"weights"
    assert (dest / "manifest.json").read_bytes() == b"{}"
    assert (dest / "code" / "inference.py").read_text() == "x = 1\n"
    assert sorted(p.name for p in files) == ["inference.py", "manifest.json", "model.pt"]


def test_real_directory_round_trip(tmp_path: Path) -> None:
    """tar czf of a directory, the way a training job's output is packed."""
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "model.pt").write_bytes(b"\0" * 1000)
    (src / "sub" / "a.txt").write_text("a")
    with tarfile.open(tmp_path / "m.tar.gz", "w:gz") as tar:
        for path in sorted(src.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(src)), recursive=False)
    safe_extract(tmp_path / "m.tar.gz", tmp_path / "out")
    assert (tmp_path / "out" / "model.pt").stat().st_size == 1000
    assert (tmp_path / "out" / "sub" / "a.txt").read_text() == "a"


@pytest.mark.parametrize(("name", "kind", "data", "fragment"), [
    ("/etc/evil", "file", b"x", "absolute path"),
    ("//evil", "file", b"x", "absolute path"),
    ("../evil", "file", b"x", "'..'"),
    ("a/../../evil", "file", b"x", "'..'"),
    ("a/b/../../../evil", "file", b"x", "'..'"),
    ("link", "symlink", "/etc/passwd", "symbolic link"),
    ("link", "symlink", "model.pt", "symbolic link"),  # even pointing inside
    ("hard", "hardlink", "/etc/passwd", "hard link"),
    ("hard", "hardlink", "model.pt", "hard link"),
    ("fifo", "fifo", b"", "not a regular file"),
    ("dev", "chardev", b"", "not a regular file"),
])
def test_hostile_member_refused_and_nothing_written(tmp_path: Path, name: str, kind: str,
                                                    data: bytes | str, fragment: str) -> None:
    # The hostile member comes last: all-or-nothing means even model.pt is not written.
    tar = make_tar(tmp_path / "evil.tar.gz", [("model.pt", "file", b"w"), (name, kind, data)])
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match=fragment):
        safe_extract(tar, dest)
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_any_compression(tmp_path: Path, mode: str) -> None:
    tar = make_tar(tmp_path / "a.tar", [("../x", "file", b"x")], mode=mode)
    with pytest.raises(UnsafeArchiveError):
        safe_extract(tar, tmp_path / "out")
    ok = make_tar(tmp_path / "b.tar", [("x", "file", b"x")], mode=mode)
    safe_extract(ok, tmp_path / "out")
    assert (tmp_path / "out" / "x").read_bytes() == b"x"


def test_existing_symlink_in_destination_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "sub").symlink_to(outside)
    tar = make_tar(tmp_path / "a.tar.gz", [("sub/evil", "file", b"x")])
    with pytest.raises(UnsafeArchiveError, match="resolves outside"):
        safe_extract(tar, dest)
    assert list(outside.iterdir()) == []


def test_limits(tmp_path: Path) -> None:
    many = make_tar(tmp_path / "many.tar", [(f"f{i}", "file", b"") for i in range(11)], "w")
    with pytest.raises(UnsafeArchiveError, match="more than 10 members"):
        safe_extract(many, tmp_path / "o1", max_members=10)
    big = make_tar(tmp_path / "big.tar", [("a", "file", b"x" * 600), ("b", "file", b"x" * 600)],
                   "w")
    with pytest.raises(UnsafeArchiveError, match="more than 1000 bytes"):
        safe_extract(big, tmp_path / "o2", max_bytes=1000)


def test_setuid_bits_dropped(tmp_path: Path) -> None:
    path = tmp_path / "suid.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("tool")
        info.size, info.mode = 1, 0o4755
        tar.addfile(info, io.BytesIO(b"x"))
    safe_extract(path, tmp_path / "out")
    assert not (tmp_path / "out" / "tool").stat().st_mode & 0o4000


def test_corrupt_archive_is_a_tar_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.tar.gz"
    path.write_bytes(b"not a tar at all" * 10)
    with pytest.raises(tarfile.TarError):
        safe_extract(path, tmp_path / "out")
