"""An in-memory stand-in for `sessions.engine.SessionEngine` (its documented API, types and errors) for the web
API tests: milliseconds per round instead of a model, and a gate to hold a round mid-sampling."""
from __future__ import annotations

import io
import threading

import numpy as np
from PIL import Image

from dualfashion_jax.sessions.engine import Candidate, FeedbackError, Round, Session, UnknownUserError

ITEMS = ("item-1", "item-2", "item-3")
COLOURS = {"red": (200, 30, 30), "blue": (30, 30, 200), "green": (30, 160, 30), "black": (10, 10, 10)}


def png(rgb: tuple[int, int, int], size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), rgb, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


class FakeEngine:
    """Users, outfits, sessions and rounds in dicts; a round's candidates are squares of the preferred colour, its
    preference the engine's {"targets": {category: {key: value}}, "avoid": {}} for the one blank, "shoes"."""

    def __init__(self, max_candidates: int = 8):
        self.max_candidates = max_candidates
        self.gate: threading.Event | None = None  # set -> every candidate waits for it (holds a round mid-sampling)
        self.sampling = threading.Event()         # set once a round reported its first progress
        self._lock = threading.Lock()             # the sampler lock of the real engine
        self._users = {"u0": {"name": "dataset user 0", "preference": {"*": {"Color": "red"}}, "appearance": {}}}
        self._sessions: dict[str, Session] = {}
        self.batches: list[list[str]] = []        # session ids of every round_many call

    def _user(self, user_id: str) -> dict:
        if user_id not in self._users:
            raise UnknownUserError(f"user {user_id!r} does not exist")
        return self._users[user_id]

    def users(self) -> list[dict]:
        return [{"id": k, "profile": v} for k, v in self._users.items()]

    def create_user(self, profile: dict) -> str:
        pref = profile.get("preference")
        if not isinstance(pref, dict) or pref.get("Color") not in COLOURS:
            raise ValueError(f"profile.preference.Color: expected one of {sorted(COLOURS)}")
        uid = f"u{len(self._users)}"
        self._users[uid] = {"name": profile.get("name", ""), "preference": {"*": pref},
                            "appearance": profile.get("appearance", {})}
        return uid

    def outfits(self, user_id: str, limit: int = 20) -> list[dict]:
        self._user(user_id)
        return [{"id": "o1", "items": list(ITEMS[:2]), "blank_category": "shoes"}][:limit]

    def item_image(self, item_id: str) -> bytes:
        if item_id not in ITEMS:
            raise KeyError(f"item {item_id!r} is not in the catalogue")
        return png((128, 128, 128))

    def start(self, user_id: str, task: str, outfit_id: str | None = None) -> Session:
        profile = self._user(user_id)
        if outfit_id not in (None, "o1"):
            raise KeyError(f"outfit {outfit_id!r}")
        sid = f"s{len(self._sessions)}"
        outfit = [*ITEMS[:2], ""] if task == "pfitb" else ["", "", ""]  # "": the slots to generate
        self._sessions[sid] = Session(sid, user_id, task, outfit, profile, [], "now", ["top", "bottom", "shoes"])
        return self._sessions[sid]

    def session(self, session_id: str) -> Session:
        if session_id not in self._sessions:
            raise KeyError(f"session {session_id!r} does not exist")
        return self._sessions[session_id]

    def sessions(self, user_id: str | None = None) -> list[dict]:
        if user_id is not None:
            self._user(user_id)
        return [{"id": s.id, "user_id": s.user_id, "task": s.task, "rounds": len(s.rounds), "created": s.created}
                for s in self._sessions.values() if user_id in (None, s.user_id)]

    def round(self, session_id: str, feedback: str | None = None, n: int = 4, on_progress=None) -> Round:
        if n > self.max_candidates:
            raise ValueError(f"n: at most {self.max_candidates} candidates")
        s = self.session(session_id)
        pref = dict(s.rounds[-1].preference["targets"]["shoes"] if s.rounds else s.profile["preference"]["*"])
        parsed = {}
        if feedback is not None:
            key, _, value = feedback.partition(":")
            if key.strip() != "Color" or value.strip() not in COLOURS:
                raise FeedbackError(f"cannot read {feedback!r}: expected 'Color: <one of {sorted(COLOURS)}>'")
            pref["Color"] = value.strip()
            parsed = {"set": {"Color": pref["Color"]}}
        with self._lock:
            cands = []
            for i in range(n):
                if on_progress:
                    on_progress(i, n)
                self.sampling.set()
                if self.gate is not None:
                    assert self.gate.wait(10), "test gate never opened"
                cands.append(Candidate(i, png(COLOURS[pref["Color"]]), f'{{"Color": "{pref["Color"]}"}}', 100 + i,
                                       [{"item_id": ITEMS[2], "score": 0.5, "image_png": png((1, 2, 3))}]))
            if on_progress:
                on_progress(n, n)
        rnd = Round(len(s.rounds) + 1, feedback, parsed, {"targets": {"shoes": pref}, "avoid": {}}, cands, {"n": n})
        s.rounds.append(rnd)
        return rnd

    def round_many(self, requests) -> list:
        """The real engine's batch entry point: each (session id, feedback, n, on_progress) in turn, errors returned."""
        self.batches.append([r[0] for r in requests])
        out = []
        for session_id, feedback, n, on_progress in requests:
            try:
                out.append(self.round(session_id, feedback, n, on_progress))
            except Exception as err:  # noqa: BLE001  returned per request, as SessionEngine.round_many does
                out.append(err)
        return out
