"""Per-session sampling progress for the web page: what a round is doing right now, polled by the page.

A round is `queued` while it waits for the engine's sampler lock, `sampling` with done/total while the engine
reports progress, then `done` or `error`. One running round per session: a second one is refused (409).
"""
from __future__ import annotations

import threading
import time


class RoundBusyError(RuntimeError):
    """A round of this session is already running."""


class ProgressBoard:
    """Thread-safe {session id: progress dict}; `begin` claims the session, `finish` releases it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._state: dict[str, dict] = {}

    def begin(self, session_id: str, n: int) -> None:
        with self._lock:
            if self._state.get(session_id, {}).get("state") in ("queued", "sampling"):
                raise RoundBusyError(f"session {session_id!r}: a round is already running; wait for it to finish")
            self._state[session_id] = {"state": "queued", "done": 0, "total": n, "started": time.time()}

    def update(self, session_id: str, done: int, total: int) -> None:
        with self._lock:
            self._state[session_id].update(state="sampling", done=int(done), total=int(total))

    def finish(self, session_id: str, error: str | None = None) -> None:
        with self._lock:
            entry = self._state[session_id]
            entry.update(state="error" if error else "done", error=error)
            if not error:
                entry["done"] = entry["total"]

    def get(self, session_id: str) -> dict:
        """A copy of the session's progress ({"state": "idle"} before its first round in this process)."""
        with self._lock:
            entry = dict(self._state.get(session_id, {"state": "idle", "done": 0, "total": 0}))
        if "started" in entry:
            entry["elapsed_s"] = round(time.time() - entry.pop("started"), 2)
        return entry
