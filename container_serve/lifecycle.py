"""Where one ``serve`` process stands, as one state with a reason; /ping answers from it.

    STARTING --first worker has the model, port open--> LOADING --every worker has it--> READY
    READY <--fewer workers than configured have it / all again--> DEGRADED
    any of those --SIGTERM--> STOPPING;  --a worker refused, nginx died, MMS exited--> FAILED

STOPPING and FAILED are final: whatever happens after them (nginx stopped by serve itself, a
late /ping) changes nothing, and ``serve``'s exit code is read from them. Only READY answers
/ping with 200; every other state answers 503 with its reason.
"""

from __future__ import annotations

import enum
import os
import threading


class ServeState(enum.Enum):
    STARTING = "starting"  # MMS starts, no worker has loaded the model yet; no port
    LOADING = "loading"  # the port is open; not every configured worker has the model yet
    READY = "ready"  # every configured worker has the model
    DEGRADED = "degraded"  # was ready; now fewer workers have the model
    STOPPING = "stopping"  # asked to stop (SIGTERM, Ctrl-C)
    FAILED = "failed"  # cannot serve any more; the reason says why


_S = ServeState
FINAL = frozenset({_S.STOPPING, _S.FAILED})
# Every allowed transition (a state may follow itself to update its reason).
_NEXT: dict[ServeState, frozenset[ServeState]] = {
    _S.STARTING: frozenset({_S.LOADING, *FINAL}),
    _S.LOADING: frozenset({_S.LOADING, _S.READY, *FINAL}),
    _S.READY: frozenset({_S.DEGRADED, *FINAL}),
    _S.DEGRADED: frozenset({_S.DEGRADED, _S.READY, *FINAL}),
    _S.STOPPING: frozenset(),
    _S.FAILED: frozenset(),
}
_FOLLOWS_MMS = frozenset({_S.LOADING, _S.READY, _S.DEGRADED})  # the port is open

# A worker that cannot load the model, or whose self-test refused it, writes the reason here,
# in serve's runtime dir; serve stops with it (read_refusal).
SELF_TEST_REFUSAL_FILE = "self-test-refused"


def read_refusal(runtime_dir: str) -> str | None:
    """A worker's refusal (one line), or None when no worker has refused."""
    try:
        with open(os.path.join(runtime_dir, SELF_TEST_REFUSAL_FILE)) as stream:
            return stream.readline().strip() or None
    except OSError:
        return None


# multi-model-server's /ping body status (health.mms_status reads it).
MMS_HEALTHY = "Healthy"  # every configured worker has the model
MMS_PARTIAL = "Partial Healthy"  # some, but fewer than configured


class Lifecycle:
    """The state of one ``serve`` process; threads (the port opener, the nginx watcher, the
    /ping server, the signal handler) move it through :meth:`move` only."""

    def __init__(self) -> None:
        # Reentrant: the SIGTERM handler moves the state on the main thread, which may hold it.
        self._lock = threading.RLock()
        self._state = ServeState.STARTING
        self._reason = "multi-model-server is starting; no worker has loaded the model yet"

    def snapshot(self) -> tuple[ServeState, str]:
        with self._lock:
            return self._state, self._reason

    @property
    def state(self) -> ServeState:
        return self.snapshot()[0]

    def is_final(self) -> bool:
        return self.state in FINAL

    def move(self, state: ServeState, reason: str) -> bool:
        """Enter ``state`` if the current one allows it; False (and no change) if not."""
        with self._lock:
            return self._enter(state, reason)

    def _enter(self, state: ServeState, reason: str) -> bool:  # the caller holds the lock
        if state not in _NEXT[self._state]:
            return False
        self._state, self._reason = state, reason
        return True

    def observe_mms(self, mms_status: str) -> None:
        """What multi-model-server's /ping said, once the port is open: every worker has the
        model (READY), or not yet (LOADING), or not any more (DEGRADED; MMS may fork a killed
        worker again, and then it is READY again)."""
        with self._lock:
            if self._state not in _FOLLOWS_MMS:
                return
            if mms_status == MMS_HEALTHY:
                self._enter(_S.READY, "every configured worker has the model loaded")
                return
            if mms_status == MMS_PARTIAL:
                reason = ("fewer workers have the model loaded than configured "
                          f"(multi-model-server: {mms_status})")
            else:
                reason = f"no worker has the model loaded: {mms_status}"
            self._enter(_S.LOADING if self._state is _S.LOADING else _S.DEGRADED, reason)

    def ping(self) -> tuple[int, str]:
        """/ping's status code and the reason for it."""
        state, reason = self.snapshot()
        return (200 if state is _S.READY else 503), reason
