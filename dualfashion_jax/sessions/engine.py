"""`SessionEngine`: multi-round, feedback-driven PFITB / GOR recommendation for a user profile, persisted in SQLite.

    engine = SessionEngine.open("runs/demo/stage3", "runs/demo/data", "sessions.db")   # loads the model once
    s = engine.start("u3", "pfitb", engine.outfits("u3")[0]["id"])
    r1 = engine.round(s.id)                                    # candidates under the profile's preference
    r2 = engine.round(s.id, "Color: blue, not: striped")       # the edited preference, fresh seeds
    assert engine.replay(s.id).rounds[1].candidates == engine.session(s.id).rounds[1].candidates
Round k's candidates are a pure function of (the stored feedback log, the round's seed, its stored settings): the
round seed is derived from (session id, round number) and keys the request (`recommend(..., key=(0, seed))`, an
input of the compiled sampler, so rounds do not recompile), so `replay` regenerates equal candidates. Generation goes
through `generation/api.recommend` (the jitted PFITB programs, n samples of a round in one batch); a GOR round makes
the 4 items slot by slot, each conditioned on the candidate's items generated so far.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import io
import threading
import uuid
from typing import Any, Callable, Mapping

import numpy as np
from PIL import Image

from dualfashion_jax.core import config as config_lib
from dualfashion_jax.data.format import SafeDataset
from dualfashion_jax.data.images import ItemImages
from dualfashion_jax.generation.api import recommend, recommend_batch, trained_with_appearance
from dualfashion_jax.generation.bundle import load_bundle
from dualfashion_jax.generation.settings import GenSettings, from_config, load_config
from dualfashion_jax.sessions import feedback as fb, grounding, profile as profile_lib
from dualfashion_jax.sessions.feedback import FeedbackError
from dualfashion_jax.sessions.store import Store

TASKS = ("pfitb", "gor")
SPLIT = "test"
SHOP_K = 3
__all__ = ["Candidate", "Round", "Session", "FeedbackError", "UnknownUserError", "SessionEngine"]


@dataclasses.dataclass
class Candidate:
    index: int
    image_png: bytes
    caption: str
    seed: int
    shop: list[dict]  # [{"item_id", "score", "image_png"}]; GOR: one entry per slot in `slot_shop`
    category: str = ""
    sample: int = -1  # index among the round's samples (differs from `index` when the round reranks)


@dataclasses.dataclass
class Round:
    number: int
    feedback: str | None
    parsed: dict
    preference: dict  # {"targets": {category: {4 caption keys}}, "avoid": {key: [values]}}
    candidates: list[Candidate]
    settings: dict


@dataclasses.dataclass
class Session:
    id: str
    user_id: str
    task: str
    outfit: list[str]  # item ids; "" at the slots being generated
    profile: dict
    rounds: list[Round]
    created: str
    categories: list[str] = dataclasses.field(default_factory=list)  # the category of every outfit slot
    outfit_id: str | None = None


class UnknownUserError(KeyError):
    """A user id that is neither a dataset user nor a created one."""


class UnknownSessionError(KeyError):
    """A session id not in the store."""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def png(image: np.ndarray) -> bytes:
    """uint8 [S, S, 3] -> PNG bytes (deterministic: fixed compression, no metadata)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


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
                 settings: Mapping[str, Any] | None = None, oversample: int = 1, fill_unknown: bool = True):
        """`oversample` k > 1: PFITB rounds sample k n images and keep the n that `grounding.rerank` puts first.
        `fill_unknown`: unstated keys of a partly stated preference go to the model as the category's typical value
        (`profile.model_preference`); False sends "Unknown" (the first version's behaviour)."""
        if max_candidates < 1 or oversample < 1:
            raise ValueError(f"max_candidates and oversample must be >= 1, got {max_candidates}, {oversample}")
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
             fill_unknown: bool = True) -> "SessionEngine":
        """Loads the model once (a training workdir or converted checkpoints), the dataset and the store."""
        ds = SafeDataset(data_dir)
        bundle = load_bundle(workdir, data=data_dir)
        return cls(bundle, ds, Store(db_path), max_candidates=max_candidates, settings=settings,
                   oversample=oversample, fill_unknown=fill_unknown)

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
        if not isinstance(n, int) or not 1 <= n <= self.max_candidates:
            raise ValueError(f"n must be an int in 1..{self.max_candidates} (max_candidates), got {n!r}")
        with self._lock:
            s = self.session(session_id)
            number = len(s.rounds) + 1
            rnd = self._generate(s, number, feedback, s.rounds[-1] if s.rounds else None, n, on_progress)
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
                out.rounds.append(self._generate(out, r.number, r.feedback, prev, len(r.candidates), None,
                                                 settings=r.settings))
            return out

    def _generate(self, s: Session, number: int, feedback: str | None, prev: Round | None, n: int,
                  on_progress, settings: dict | None = None) -> Round:
        parsed, state = self._next_preference(s, feedback, prev)
        if settings is None:
            settings = {"seed": round_seed(s.id, number), "n": n, "oversample": self.oversample,
                        "fill_unknown": self.fill_unknown, "sampler": self.settings[s.task].to_json()}
        gen = GenSettings.from_json(settings["sampler"])
        progress = on_progress or (lambda done, total: None)
        fn = self._pfitb if s.task == "pfitb" else self._gor
        fill = settings.get("fill_unknown", False)  # rounds stored before the fill replay without it
        text = {c: profile_lib.model_preference(p, self.typical.get(c, {}) if fill else {}, state["avoid"])
                for c, p in state["targets"].items()}  # what the model reads per target category
        cands = fn(s, state, text, gen, settings["seed"], n, progress, settings.get("oversample", 1))
        return Round(number, feedback, parsed, state, cands, settings)

    def _appearance(self, s: Session) -> dict | None:
        """The profile's appearance for the preference text, when the checkpoint trained with it (else None)."""
        return s.profile.get("appearance") or None if self.appearance_text else None

    def _shop(self, image: np.ndarray, category: str) -> list[dict]:
        return [{"item_id": str(i), "score": round(score, 6), "image_png": self.item_image(str(i))}
                for i, score in self.catalogue.nearest(image, self.cat_ids[category], SHOP_K)]

    def _pfitb(self, s: Session, state: dict, text: dict, gen: GenSettings, seed: int, n: int, progress,
               oversample: int = 1) -> list[Candidate]:
        blank = s.outfit.index("")
        cat = s.categories[blank]
        ctx = [self.images(int(i)) for i in s.outfit if i]
        m = n * oversample
        progress(0, m)
        images, captions = recommend(self.bundle, text[cat], cat, ctx, num_images=m, num_captions=m,
                                     seed=gen.seed, settings=gen, key=(0, seed), appearance=self._appearance(s))
        progress(m, m)
        shops = [self._shop(im, cat) for im in images]
        order = list(range(m))
        if oversample > 1:  # keep the n samples whose nearest catalogue items best match the stated preference
            info = self.ds.item_info
            near = [info.get(int(sh[0]["item_id"]), {}).get("elements", {}) for sh in shops]
            order = grounding.rerank(near, state["targets"][cat], state["avoid"])
        return [Candidate(r, png(images[k]), captions[k], seed, shops[k], cat, sample=k)
                for r, k in enumerate(order[:n])]

    def _gor(self, s: Session, state: dict, text: dict, gen: GenSettings, seed: int, n: int, progress,
             oversample: int = 1) -> list[Candidate]:
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
