"""Rounds of different sessions batched onto the jitted sampler: the requests that arrive within `window_s` of the
first waiting one run as one `SessionEngine.round_many` call (PFITB rounds sharing the sampler settings are one
sampler batch there), and each waiting request gets its own session's round back.

One worker thread drains the queue, so the engine sees one batch at a time; a session never has two rounds in
one batch (the web app's `ProgressBoard` already refuses a second running round, and a duplicate would wait for
the next batch anyway).
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent import futures
from typing import Callable


class RoundBatcher:
    """`submit` blocks until the round is done and returns it (or raises its error); see module docstring."""

    def __init__(self, engine, window_s: float = 0.05, max_rounds: int = 8):
        if window_s < 0 or max_rounds < 1:
            raise ValueError(f"window_s must be >= 0 and max_rounds >= 1, got {window_s}, {max_rounds}")
        self.engine, self.window_s, self.max_rounds = engine, float(window_s), int(max_rounds)
        self.batches: list[list[str]] = []  # session ids of every batch run (for tests and logs)
        self._queue: queue.Queue = queue.Queue()
        self._held: list[tuple] = []  # requests deferred to the next batch (their session was already in it)
        self._worker = threading.Thread(target=self._loop, name="round-batcher", daemon=True)
        self._worker.start()

    def submit(self, session_id: str, feedback: str | None, n: int,
               on_progress: Callable[[int, int], None] | None = None):
        """The session's next round, run in the next batch (blocks the calling thread until it is done)."""
        done: futures.Future = futures.Future()
        self._queue.put((session_id, feedback, n, on_progress, done))
        return done.result()

    def _collect(self) -> list[tuple]:
        """The held requests plus what arrives within the window after the first (at most `max_rounds`)."""
        items, self._held = self._held, []
        if not items:
            items.append(self._queue.get())
        deadline = time.monotonic() + self.window_s
        while len(items) < self.max_rounds:
            try:
                items.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        batch, seen = [], set()
        for item in items:  # one round per session per batch; the others wait for the next
            (self._held if item[0] in seen else batch).append(item)
            seen.add(item[0])
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._collect()
            self.batches.append([item[0] for item in batch])
            try:
                results = self.engine.round_many([item[:4] for item in batch])
            except Exception as err:  # the whole batch failed (e.g. the sampler): every waiting request gets it
                results = [err] * len(batch)
            for item, result in zip(batch, results):
                if isinstance(result, Exception):
                    item[4].set_exception(result)
                else:
                    item[4].set_result(result)
