"""SQLite persistence of sessions (standard-library `sqlite3`): users, sessions, rounds, candidates, feedback log.

One file, schema version in `PRAGMA user_version` (a file of another version is refused, never rewritten).
Every write is one transaction under a lock, so a crash leaves whole rounds; the connection is shared by threads.
"""
from __future__ import annotations

import json
import pathlib
import sqlite3
import threading
from typing import Any

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE users (id TEXT PRIMARY KEY, profile TEXT NOT NULL, created TEXT NOT NULL);
CREATE TABLE sessions (id TEXT PRIMARY KEY, user_id TEXT NOT NULL REFERENCES users(id), task TEXT NOT NULL,
                       outfit_id TEXT, outfit TEXT NOT NULL, profile TEXT NOT NULL, settings TEXT NOT NULL,
                       created TEXT NOT NULL);
CREATE TABLE rounds (session_id TEXT NOT NULL REFERENCES sessions(id), number INTEGER NOT NULL, feedback TEXT,
                     parsed TEXT NOT NULL, preference TEXT NOT NULL, settings TEXT NOT NULL, created TEXT NOT NULL,
                     PRIMARY KEY (session_id, number));
CREATE TABLE candidates (session_id TEXT NOT NULL, round INTEGER NOT NULL, idx INTEGER NOT NULL, seed INTEGER NOT NULL,
                         caption TEXT NOT NULL, image_png BLOB NOT NULL, shop TEXT NOT NULL, category TEXT NOT NULL,
                         PRIMARY KEY (session_id, round, idx), FOREIGN KEY (session_id, round)
                         REFERENCES rounds(session_id, number));
CREATE INDEX sessions_by_user ON sessions(user_id);
"""


class StoreError(RuntimeError):
    """The database file is not a session store this code can read."""


class Store:
    """Thread-safe access to one session database (created on first open)."""

    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA foreign_keys = ON")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        tables = self._db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        if version == 0 and tables == 0:
            with self._tx() as db:
                db.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
        elif version != SCHEMA_VERSION:
            raise StoreError(f"{self.path}: session store schema version {version}, this code reads "
                             f"{SCHEMA_VERSION} (an unrelated SQLite file?); choose another --db")

    def _tx(self):
        return _Tx(self._db, self._lock)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------------------------------------ writes
    def add_user(self, user_id: str, profile: dict, created: str) -> None:
        with self._tx() as db:
            db.execute("BEGIN")
            db.execute("INSERT INTO users VALUES (?, ?, ?)", (user_id, json.dumps(profile), created))
            db.execute("COMMIT")

    def add_session(self, row: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute("BEGIN")
            db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (row["id"], row["user_id"], row["task"], row["outfit_id"], json.dumps(row["outfit"]),
                        json.dumps(row["profile"]), json.dumps(row["settings"]), row["created"]))
            db.execute("COMMIT")

    def add_round(self, session_id: str, rnd: dict[str, Any], candidates: list[dict[str, Any]]) -> None:
        """One round and its candidates, atomically (a round number already stored raises IntegrityError)."""
        with self._tx() as db:
            db.execute("BEGIN")
            try:
                db.execute("INSERT INTO rounds VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (session_id, rnd["number"], rnd["feedback"], json.dumps(rnd["parsed"]),
                            json.dumps(rnd["preference"]), json.dumps(rnd["settings"]), rnd["created"]))
                db.executemany("INSERT INTO candidates VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                               [(session_id, rnd["number"], c["index"], c["seed"], c["caption"], c["image_png"],
                                 json.dumps(c["shop"]), c["category"]) for c in candidates])
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # ------------------------------------------------------------------------------------------------- reads
    def users(self) -> list[tuple[str, dict]]:
        with self._tx() as db:
            return [(u, json.loads(p)) for u, p in db.execute("SELECT id, profile FROM users ORDER BY created, id")]

    def user(self, user_id: str) -> dict | None:
        with self._tx() as db:
            row = db.execute("SELECT profile FROM users WHERE id = ?", (user_id,)).fetchone()
        return None if row is None else json.loads(row[0])

    def session(self, session_id: str) -> dict | None:
        with self._tx() as db:
            row = db.execute("SELECT id, user_id, task, outfit_id, outfit, profile, settings, created FROM sessions "
                             "WHERE id = ?", (session_id,)).fetchone()
            if row is None:
                return None
            rounds = db.execute("SELECT number, feedback, parsed, preference, settings FROM rounds "
                                "WHERE session_id = ? ORDER BY number", (session_id,)).fetchall()
            cands = db.execute("SELECT round, idx, seed, caption, image_png, shop, category FROM candidates "
                               "WHERE session_id = ? ORDER BY round, idx", (session_id,)).fetchall()
        keys = ("id", "user_id", "task", "outfit_id", "outfit", "profile", "settings", "created")
        out = dict(zip(keys, row))
        for k in ("outfit", "profile", "settings"):
            out[k] = json.loads(out[k])
        by_round: dict[int, list[dict]] = {}
        for r, idx, seed, cap, png, shop, cat in cands:
            by_round.setdefault(r, []).append({"index": idx, "seed": seed, "caption": cap, "image_png": bytes(png),
                                               "shop": json.loads(shop), "category": cat})
        out["rounds"] = [{"number": n, "feedback": fb, "parsed": json.loads(p), "preference": json.loads(pr),
                          "settings": json.loads(s), "candidates": by_round.get(n, [])}
                         for n, fb, p, pr, s in rounds]
        return out

    def sessions(self, user_id: str | None = None) -> list[dict]:
        q = ("SELECT s.id, s.user_id, s.task, s.outfit_id, s.created, count(r.number) FROM sessions s "
             "LEFT JOIN rounds r ON r.session_id = s.id {} GROUP BY s.id ORDER BY s.created, s.id")
        with self._tx() as db:
            rows = (db.execute(q.format("WHERE s.user_id = ?"), (user_id,)) if user_id is not None
                    else db.execute(q.format(""))).fetchall()
        return [{"id": i, "user_id": u, "task": t, "outfit_id": o, "created": c, "rounds": n}
                for i, u, t, o, c, n in rows]


class _Tx:
    """`with store._tx() as db:` holds the lock for the statements inside."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock):
        self.db, self.lock = db, lock

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        return self.db

    def __exit__(self, *exc) -> None:
        self.lock.release()
