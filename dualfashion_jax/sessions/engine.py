"""`SessionEngine`: multi-round, feedback-driven PFITB / GOR recommendation for a user profile, persisted in SQLite.

    engine = SessionEngine.open("runs/demo/stage3", "runs/demo/data", "sessions.db")   # loads the model once
    s = engine.start("u3", "pfitb", engine.outfits("u3")[0]["id"])
    r1 = engine.round(s.id)                                    # candidates under the profile's preference
    r2 = engine.round(s.id, "Color: blue, not: striped")       # the edited preference, fresh seeds
    assert engine.replay(s.id).rounds[1].candidates == engine.session(s.id).rounds[1].candidates
    rs = engine.round_many([(s.id, "more like #2", 4, None), (t.id, None, 4, None)])  # one sampler batch
Round k's candidates are a pure function of (the stored feedback log, the round's seed, its stored settings): the
round seed is derived from (session id, round number) and keys the request (`Request.key = (0, seed)`, an input of
the compiled sampler, so rounds do not recompile), so `replay` regenerates equal candidates. PFITB rounds go through
`generation/api.recommend_many` (n samples of a round, and the rounds of several sessions, in one batch of chains
padded to the stored `chains`; a replay samples a round at its stored row `chain`, as XLA:CPU may round the rows of
one batch apart); "more like #k" starts the samples from candidate k's image (SDEdit at the stored `like_strength`).
A GOR round makes the 4 items slot by slot, each conditioned on the candidate's items so far.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import threading
import uuid
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from dualfashion_jax.core import config as config_lib
from dualfashion_jax.data.format import SafeDataset
from dualfashion_jax.data.images import ItemImages
from dualfashion_jax.generation.api import Request, recommend_batch, recommend_many, trained_with_appearance
from dualfashion_jax.generation.bundle import load_bundle
from dualfashion_jax.generation.settings import GenSettings, from_config, load_config
from dualfashion_jax.sessions import feedback as fb, grounding, profile as profile_lib
from dualfashion_jax.sessions.feedback import FeedbackError
from dualfashion_jax.sessions.records import (Candidate, Round, Session, UnknownSessionError, UnknownUserError,
                                              decode_png, png)
from dualfashion_jax.sessions.store import Store

TASKS = ("pfitb", "gor")
SPLIT = "test"
SHOP_K = 3
LIKE_STRENGTH = 0.3  # "more like #k": re-run the last 30 % of the schedule from candidate k's image (a light edit)
__all__ = ["Candidate", "Round", "Session", "FeedbackError", "UnknownUserError", "SessionEngine"]


@dataclasses.dataclass
class _Plan:
    """A round ready to sample: its session, edited preference, settings (seed, n, chains, ...), the text the model
    reads per target category and the start images of an image-grounded PFITB round (uint8 [m, S, S, 3] or None)."""

    session: Session
    number: int
    feedback: str | None
    parsed: dict
    state: dict
    settings: dict
    text: dict
    starts: np.ndarray | None
    progress: Callable[[int, int], None]

    def batch_key(self) -> str:
        """Plans with equal keys sample as one batch (same compiled program and sample count)."""
        st = self.settings
        return json.dumps([st["sampler"], st["n"] * st.get("oversample", 1), self.strength()], sort_keys=True)

    def strength(self) -> float | None:
        return None if self.starts is None else self.settings["like_strength"]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def round_seed(session_id: str, number: int) -> int:
    """The sampling seed of round `number` (31 bits, stable across processes)."""
    return int.from_bytes(hashlib.sha256(f"{session_id}/{number}".encode()).digest()[:4], "little") & 0x7FFFFFFF


def task_settings(task: str, overrides: Mapping[str, Any] | None = None) -> GenSettings:
    """GenSettings of `task` from configs/generate.py:<task> with `overrides` of its fields (steps, scales, ...)."""
    c = load_config(task)
    for k, v in (overrides or {}).items():
        if k not in c:
            raise ValueError(f"settings: unknown generate-config field {k!r}; known: {sorted(c.keys())}")
        c[k] = v
    return from_config(c)


def demo_overrides(size: str = "demo") -> dict[str, Any]:
    """The sampler settings `dualfashion-jax demo` generates with (configs/demo.py:<size>), as generate fields."""
    g = config_lib.load(f"demo.py:{size}").generate
    return {"steps": g.image_steps, "caption_steps": g.caption_steps, "guidance": g.guidance, "scales": g.scales,
            "match_train_input": g.match_train_input, "caption_cond": g.caption_cond}


class SessionEngine:
    """The session API (module docstring). Every public method is thread-safe; `round` serialises sampling."""

    def __init__(self, bundle, ds: SafeDataset, store: Store, *, max_candidates: int = 8,
                 settings: Mapping[str, Any] | None = None, oversample: int = 1, fill_unknown: bool = True,
                 like_strength: float | None = LIKE_STRENGTH):
        """`oversample` k > 1: PFITB rounds sample k n images and keep the n that `grounding.rerank` puts first.
        `fill_unknown`: unstated keys of a partly stated preference go to the model as the category's typical value
        (`profile.model_preference`); False sends "Unknown" (the first version's behaviour).
        `like_strength` in (0, 1]: a PFITB "more like #k" round starts from candidate k's image, noised to that
        share of the schedule (`generation/design.py`); None: it only copies k's caption values."""
        if max_candidates < 1 or oversample < 1:
            raise ValueError(f"max_candidates and oversample must be >= 1, got {max_candidates}, {oversample}")
        if like_strength is not None and not 0.0 < float(like_strength) <= 1.0:
            raise ValueError(f"like_strength must be in (0, 1] or None, got {like_strength}")
        self.like_strength = None if like_strength is None else float(like_strength)
        self.oversample, self.fill_unknown = int(oversample), bool(fill_unknown)
        self.typical = profile_lib.typical_preferences(ds)
        self.bundle, self.ds, self.store, self.max_candidates = bundle, ds, store, int(max_candidates)
        self.overrides = dict(settings or {})
        self.settings = {t: task_settings(t, self.overrides) for t in TASKS}
        self.vocab = fb.Vocabulary.from_dataset(ds)
        self.images = ItemImages(ds, bundle.image_size, cache_items=4096)
        self.catalogue = grounding.Catalogue(ds, bundle.image_size)
        self.categories = ds.categories
        self.cat_ids = {name: c for c, name in self.categories.items()}
        self.appearance_text = trained_with_appearance(bundle)  # the profile's appearance joins the preference text
        self.dataset_users = {f"u{uid}": p for uid, p in profile_lib.dataset_profiles(ds, SPLIT).items()}
        self._lock = threading.RLock()

    @classmethod
    def open(cls, workdir: str, data_dir: str, db_path: str, *, max_candidates: int = 8,
             settings: Mapping[str, Any] | None = None, oversample: int = 1,
             fill_unknown: bool = True, like_strength: float | None = LIKE_STRENGTH) -> "SessionEngine":
        """Loads the model once (a training workdir or converted checkpoints), the dataset and the store."""
        ds = SafeDataset(data_dir)
        bundle = load_bundle(workdir, data=data_dir)
        return cls(bundle, ds, Store(db_path), max_candidates=max_candidates, settings=settings,
                   oversample=oversample, fill_unknown=fill_unknown, like_strength=like_strength)

    # ------------------------------------------------------------------------------------------------ users
    def users(self) -> list[dict]:
        stored = dict(self.store.users())
        out = [{"id": u, "profile": p} for u, p in self.dataset_users.items()]
        return out + [{"id": u, "profile": p} for u, p in stored.items() if u not in self.dataset_users]

    def create_user(self, profile: dict) -> str:
        p = profile_lib.normalize(profile, self.categories)
        if p["data_uid"] is not None and p["data_uid"] not in {v["data_uid"] for v in self.dataset_users.values()}:
            raise ValueError(f"profile.data_uid {p['data_uid']}: no such user in {self.ds.root} ({SPLIT} split)")
        user_id = f"p{uuid.uuid4().hex[:10]}"
        self.store.add_user(user_id, p, _now())
        return user_id

    def profile(self, user_id: str) -> dict:
        if user_id in self.dataset_users:
            return self.dataset_users[user_id]
        p = self.store.user(user_id)
        if p is None:
            raise UnknownUserError(f"unknown user {user_id!r}: not a dataset user (u<uid>) nor a created one")
        return p

    def outfits(self, user_id: str, limit: int = 20) -> list[dict]:
        """Test outfits to complete (the user's own first when the profile is a dataset user's)."""
        p = self.profile(user_id)
        fitb = self.ds.fitb(SPLIT)
        order = np.argsort(fitb.uids != (p["data_uid"] if p["data_uid"] is not None else -1), kind="stable")
        out = []
        for r in order[: max(int(limit), 0)]:
            items, cats = fitb.outfits[r], fitb.category[r]
            blank = int(np.flatnonzero(items == 0)[0])
            out.append({"id": f"{SPLIT}:{int(fitb.oids[r])}", "items": [str(int(i)) for i in items if i > 0],
                        "blank_category": self.categories[int(cats[blank])]})
        return out

    def item_image(self, item_id: str) -> bytes:
        """PNG bytes of catalogue item `item_id` (at the model's image size)."""
        try:
            iid = int(item_id)
        except (TypeError, ValueError):
            raise KeyError(f"item id {item_id!r} is not an integer") from None
        if not 1 <= iid <= self.ds.num_items:
            raise KeyError(f"item id {iid} out of range 1..{self.ds.num_items}")
        return png(self.images(iid))

    # --------------------------------------------------------------------------------------------- sessions
    def _outfit_row(self, outfit_id: str) -> int:
        split, _, oid = str(outfit_id).partition(":")
        fitb = self.ds.fitb(SPLIT)
        rows = np.flatnonzero(fitb.oids == int(oid)) if split == SPLIT and oid.isdigit() else []
        if len(rows) != 1:
            raise KeyError(f"unknown outfit {outfit_id!r}; expected '{SPLIT}:<oid>' from outfits()")
        return int(rows[0])

    def start(self, user_id: str, task: str, outfit_id: str | None = None) -> Session:
        if task not in TASKS:
            raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
        p = self.profile(user_id)
        outfit_id = outfit_id or self.outfits(user_id, 1)[0]["id"]
        r = self._outfit_row(outfit_id)
        fitb = self.ds.fitb(SPLIT)
        cats = [self.categories[int(c)] for c in fitb.category[r]]
        items = [str(int(i)) if i > 0 and task == "pfitb" else "" for i in fitb.outfits[r]]
        with self._lock:
            if user_id in self.dataset_users and self.store.user(user_id) is None:
                self.store.add_user(user_id, p, _now())
            row = {"id": uuid.uuid4().hex[:12], "user_id": user_id, "task": task, "outfit_id": outfit_id,
                   "outfit": {"items": items, "categories": cats}, "profile": p,
                   "settings": {"overrides": self.overrides}, "created": _now()}
            self.store.add_session(row)
        return self.session(row["id"])

    def session(self, session_id: str) -> Session:
        d = self.store.session(session_id)
        if d is None:
            raise UnknownSessionError(f"unknown session {session_id!r}")
        rounds = [Round(r["number"], r["feedback"], r["parsed"], r["preference"],
                        [self._candidate(c) for c in r["candidates"]], r["settings"]) for r in d["rounds"]]
        return Session(d["id"], d["user_id"], d["task"], d["outfit"]["items"], d["profile"], rounds, d["created"],
                       d["outfit"]["categories"], d["outfit_id"])

    def _candidate(self, stored: dict) -> Candidate:
        shop = [{**d, "image_png": self.item_image(d["item_id"])} for d in stored["shop"]]
        return Candidate(**{**stored, "shop": shop})

    def sessions(self, user_id: str | None = None) -> list[dict]:
        if user_id is not None:
            self.profile(user_id)
        return self.store.sessions(user_id)

    # ------------------------------------------------------------------------------------------------ rounds
    def _next_preference(self, s: Session, feedback: str | None, prev: Round | None) -> tuple[dict, dict]:
        """(parsed feedback, {"targets", "avoid"}) of the next round."""
        targets = [s.categories[i] for i, it in enumerate(s.outfit) if not it]
        if prev is None:
            state = {"targets": {c: profile_lib.preference_for(s.profile, c) for c in targets}, "avoid": {}}
        else:
            state = prev.preference
        if feedback is None:
            return {}, state
        parsed = fb.parse(feedback, self.vocab)
        captions = [c.caption for c in prev.candidates] if prev else []
        edited = {c: fb.apply(state["targets"][c], state["avoid"], parsed, captions, self.vocab) for c in targets}
        avoid = next(iter(edited.values()))[1]  # the same edit of the same avoid list for every target
        return parsed, {"targets": {c: p for c, (p, _) in edited.items()}, "avoid": avoid}

    def round(self, session_id: str, feedback: str | None = None, n: int = 4,
              on_progress: Callable[[int, int], None] | None = None) -> Round:
        """Generate, ground, store and return the next round (feedback edits the last round's preference)."""
        out = self.round_many([(session_id, feedback, n, on_progress)], chains=1)[0]
        if isinstance(out, Exception):
            raise out
        return out

    def round_many(self, requests: Sequence[tuple[str, str | None, int, Callable | None]],
                   chains: int | None = None) -> list[Round | Exception]:
        """The next round of each (session id, feedback, n, on_progress), one per session; PFITB rounds that share
        the sampler settings run as ONE sampler batch (padded to `chains`, default the next power of 2), each
        session's candidates routed back. Per request: its Round, or the error it raised (nothing stored)."""
        out: list[Round | Exception | None] = [None] * len(requests)
        groups: dict[str, list[tuple[int, _Plan]]] = {}
        with self._lock:
            if len({r[0] for r in requests}) != len(requests):
                raise ValueError("round_many: at most one round per session in one batch")
            for i, (sid, feedback, n, on_progress) in enumerate(requests):
                try:
                    if not isinstance(n, int) or not 1 <= n <= self.max_candidates:
                        raise ValueError(f"n must be an int in 1..{self.max_candidates} (max_candidates), got {n!r}")
                    s = self.session(sid)
                    plan = self._plan(s, len(s.rounds) + 1, feedback, s.rounds[-1] if s.rounds else None, n,
                                      on_progress)
                except (FeedbackError, KeyError, ValueError) as err:
                    out[i] = err
                    continue
                if s.task == "gor":
                    out[i] = self._store(sid, Round(plan.number, feedback, plan.parsed, plan.state, self._gor(
                        s, plan.text, GenSettings.from_json(plan.settings["sampler"]), plan.settings["seed"], n,
                        plan.progress), plan.settings))
                else:
                    groups.setdefault(plan.batch_key(), []).append((i, plan))
            for group in groups.values():
                size = chains or 1 << (len(group) - 1).bit_length()
                for row, (_, plan) in enumerate(group):  # the row too: XLA:CPU rounds rows of a batch apart
                    plan.settings.update(chains=max(size, len(group)), chain=row)
                for (i, plan), cands in zip(group, self._sample_pfitb([p for _, p in group])):
                    out[i] = self._store(plan.session.id, Round(plan.number, plan.feedback, plan.parsed,
                                                                plan.state, cands, plan.settings))
        return out

    def _store(self, session_id: str, rnd: Round) -> Round:
        cands = [{**vars(c), "shop": [{k: v for k, v in d.items() if k != "image_png"} for d in c.shop]}
                 for c in rnd.candidates]  # catalogue images are not copied into the store
        self.store.add_round(session_id, {"number": rnd.number, "feedback": rnd.feedback, "parsed": rnd.parsed,
                                          "preference": rnd.preference, "settings": rnd.settings,
                                          "created": _now()}, cands)
        return rnd

    def replay(self, session_id: str) -> Session:
        """The session regenerated from its log (feedback, seeds, settings); nothing is written."""
        with self._lock:
            s = self.session(session_id)
            out = dataclasses.replace(s, rounds=[])
            for r in s.rounds:
                prev = out.rounds[-1] if out.rounds else None
                plan = self._plan(out, r.number, r.feedback, prev, len(r.candidates), None, settings=r.settings)
                if s.task == "gor":
                    cands = self._gor(out, plan.text, GenSettings.from_json(r.settings["sampler"]),
                                      r.settings["seed"], len(r.candidates), plan.progress)
                else:
                    cands = self._sample_pfitb([plan])[0]
                out.rounds.append(Round(r.number, r.feedback, plan.parsed, plan.state, cands, r.settings))
            return out

    def _plan(self, s: Session, number: int, feedback: str | None, prev: Round | None, n: int, on_progress,
              settings: dict | None = None) -> _Plan:
        parsed, state = self._next_preference(s, feedback, prev)
        if settings is None:
            settings = {"seed": round_seed(s.id, number), "n": n, "oversample": self.oversample,
                        "fill_unknown": self.fill_unknown, "like_strength": self.like_strength,
                        "sampler": self.settings[s.task].to_json()}
        fill = settings.get("fill_unknown", False)  # rounds stored before the fill replay without it
        text = {c: profile_lib.model_preference(p, self.typical.get(c, {}) if fill else {}, state["avoid"])
                for c, p in state["targets"].items()}  # what the model reads per target category
        starts = None
        if parsed.get("like") and s.task == "pfitb" and settings.get("like_strength") is not None:
            liked = [decode_png(prev.candidates[k - 1].image_png) for k in parsed["like"]]
            m = settings["n"] * settings.get("oversample", 1)
            starts = np.stack([liked[i % len(liked)] for i in range(m)])  # [m, S, S, 3]: sample i from like i mod
        return _Plan(s, number, feedback, parsed, state, settings, text, starts,
                     on_progress or (lambda done, total: None))

    def _appearance(self, s: Session) -> dict | None:
        """The profile's appearance for the preference text, when the checkpoint trained with it (else None)."""
        return s.profile.get("appearance") or None if self.appearance_text else None

    def _shop(self, image: np.ndarray, category: str) -> list[dict]:
        return [{"item_id": str(i), "score": round(score, 6), "image_png": self.item_image(str(i))}
                for i, score in self.catalogue.nearest(image, self.cat_ids[category], SHOP_K)]

    def _sample_pfitb(self, plans: Sequence[_Plan]) -> list[list[Candidate]]:
        """The candidates of PFITB plans with one `batch_key`: one `recommend_many` call of their chains."""
        st = plans[0].settings
        gen = GenSettings.from_json(st["sampler"])
        oversample = st.get("oversample", 1)
        m = st["n"] * oversample
        requests = []
        for p in plans:
            s = p.session
            cat = s.categories[s.outfit.index("")]
            ctx = [self.images(int(i)) for i in s.outfit if i]
            requests.append(Request(p.text[cat], cat, ctx, (0, p.settings["seed"]), self._appearance(s), p.starts))
            p.progress(0, m)
        row = st.get("chain", 0) if len(plans) == 1 else 0  # a replayed round samples at its live batch row
        images, captions = recommend_many(self.bundle, requests * (row + 1), m, m, gen.seed, gen,
                                          strength=plans[0].strength(), chains=st.get("chains", 1))
        images, captions = images[row:], captions[row:]  # [C, m, S, S, 3], [C][m]
        out = []
        for p, r, ims, caps in zip(plans, requests, images, captions):
            p.progress(m, m)
            shops = [self._shop(im, r.category) for im in ims]
            order = list(range(m))
            if oversample > 1:  # keep the n samples whose nearest catalogue items best match the stated preference
                info = self.ds.item_info
                near = [info.get(int(sh[0]["item_id"]), {}).get("elements", {}) for sh in shops]
                order = grounding.rerank(near, p.state["targets"][r.category], p.state["avoid"])
            out.append([Candidate(i, png(ims[k]), caps[k], p.settings["seed"], shops[k], r.category, sample=k)
                        for i, k in enumerate(order[: p.settings["n"]])])
        return out

    def _gor(self, s: Session, text: dict, gen: GenSettings, seed: int, n: int, progress) -> list[Candidate]:
        """n outfits; item j of outfit k is generated from the outfit's items 0..j-1 (key (k + 1, round seed)); the n
        candidates of a slot are independent, so each slot is one `recommend_batch` call (4 calls per round)."""
        slots = len(s.categories)
        images = np.zeros((n, slots, self.bundle.image_size, self.bundle.image_size, 3), np.uint8)
        captions = [[""] * slots for _ in range(n)]
        progress(0, n * slots)
        for j, cat in enumerate(s.categories):  # the n candidates of a slot are one sampler batch of n chains
            img, cap = recommend_batch(self.bundle, text[cat], cat,
                                       [list(images[k, max(0, j - 3): j]) for k in range(n)],
                                       [(k + 1, seed) for k in range(n)], num_images=1, num_captions=1,
                                       seed=gen.seed, settings=gen, appearance=self._appearance(s))
            images[:, j] = img[:, 0]
            for k in range(n):
                captions[k][j] = cap[k][0]
            progress((j + 1) * n, n * slots)
        out = []
        for k in range(n):
            row = np.concatenate(list(images[k]), axis=1)  # [S, 4S, 3]: the outfit side by side
            shop = [dict(d, slot=j) for j, cat in enumerate(s.categories) for d in self._shop(images[k, j], cat)[:1]]
            out.append(Candidate(k, png(row), " | ".join(captions[k]), seed, shop, ",".join(s.categories), sample=k))
        return out
