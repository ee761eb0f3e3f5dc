"""Drop root before anything reads a request: nginx, multi-model-server (java) and its Python
workers run as an unprivileged user.

SageMaker starts every container as root (``docker run IMAGE serve``; its documentation asks
images to run as root, and mounts /opt/ml/model for root). So ``serve`` starts as root, checks
that the unprivileged user could do the whole job, and then gives up root for good (all of
its uids and groups) before it starts MMS (and its workers) or nginx: a request, a decoder or
a model file then runs code as that user, which cannot write the image, /etc or the venv.

It stays root, with one log line that says why, where the user could not do the job:
- the serving user is not in the image (outside our image: host runs, tests as root);
- a file in the model directory is not readable by that user (SageMaker unpacks
  model.tar.gz with the permissions its files were archived with; the training image writes
  them world-readable, a hand-made archive may not);
- ``code/requirements.txt`` in the model directory: the inference toolkit pip-installs it
  into the image's Python at every start, which needs root;
- the port is privileged here (below net.ipv4.ip_unprivileged_port_start; Docker sets it to 0
  inside containers, so SageMaker's ports are not).
The toolkit's other root-only habit, writing /etc/sagemaker-mms.properties at every start,
does not apply: serve points it at the private runtime directory.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

SERVE_USER = "model-server"  # created by docker/Dockerfile.serve
UNPRIVILEGED_PORT_START = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")


def _unreadable(model_dir: str, uid: int, gid: int) -> str | None:
    """The first file or directory under model_dir that uid:gid cannot read, or None.

    Tried with the effective ids switched (reversible while the real uid is root): the kernel
    answers, ACLs and all, rather than a re-implementation of permission bits."""
    failed: list[str] = []

    def note(error: OSError) -> None:
        failed.append(str(error.filename))

    saved_groups = os.getgroups()
    os.setgroups([])
    os.setegid(gid)
    os.seteuid(uid)
    try:
        for root, _, files in os.walk(model_dir, onerror=note):
            for name in files:
                try:
                    with open(os.path.join(root, name), "rb"):
                        pass
                except OSError:
                    failed.append(os.path.join(root, name))
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(saved_groups)
    return failed[0] if failed else None


def _port_is_privileged(port: int) -> bool:
    try:
        start = int(UNPRIVILEGED_PORT_START.read_text())
    except (OSError, ValueError):
        start = 1024
    return port < start


def why_stay_root(model_dir: str, port: int, user: pwd.struct_passwd | None) -> str | None:
    """Why serve must keep root here (see the module docstring), or None."""
    if user is None:
        return f"no user {SERVE_USER!r} in this image"
    if os.path.exists(os.path.join(model_dir, "code", "requirements.txt")):
        return ("the model directory has code/requirements.txt, which the inference toolkit "
                "pip-installs into the image at start")
    if _port_is_privileged(port):
        return f"port {port} is privileged here"
    unreadable = _unreadable(model_dir, user.pw_uid, user.pw_gid)
    if unreadable:
        return f"{unreadable} is not readable by {SERVE_USER}"
    return None


def drop_root(model_dir: str, runtime_dir: str, port: int) -> str:
    """As root: become SERVE_USER for good (runtime_dir handed over to it) unless a reason in
    why_stay_root says otherwise. Not root: nothing to do. Returns a line for the log."""
    if os.geteuid() != 0:
        return f"running as uid {os.geteuid()}"
    try:
        user: pwd.struct_passwd | None = pwd.getpwnam(SERVE_USER)
    except KeyError:
        user = None
    reason = why_stay_root(model_dir, port, user)
    if reason is not None or user is None:
        return f"running as root: {reason}"
    for root, dirs, files in os.walk(runtime_dir):  # new, or reused by an earlier start
        for name in (root, *(os.path.join(root, n) for n in dirs + files)):
            os.lchown(name, user.pw_uid, user.pw_gid)
    os.setgroups([])
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)  # real, effective and saved: no way back
    os.environ.update(HOME=runtime_dir, USER=SERVE_USER, LOGNAME=SERVE_USER)
    return f"running as {SERVE_USER} (uid {user.pw_uid}), not root"
