"""What the benches and the serving tests share to run a server on this machine: a free port,
and stopping a server's whole process session."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
from collections.abc import Callable, Iterable
from typing import Any


def free_port() -> int:
    """A free port below the kernel's ephemeral range (no client socket takes it meanwhile)."""
    for port in random.sample(range(20000, 32700), 300):
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port in 20000-32700")


def stop_session(proc: subprocess.Popen, leftovers: Callable[[], Iterable[Any]]) -> int:
    """SIGTERM as SageMaker does; after a minute, kill what ``leftovers()`` still finds
    (psutil processes) and the process's whole session (started with start_new_session)."""
    import psutil

    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    for leftover in leftovers():
        try:
            leftover.kill()
        except psutil.Error:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return proc.wait(timeout=30)
