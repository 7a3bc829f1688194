"""The records of a session (its candidates, rounds, the session itself), their PNG encoding and the engine's
not-found errors: what the store holds and every client (web page, terminal, Python) reads."""
from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image


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


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> uint8 [H, W, 3] RGB."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def png(image: np.ndarray) -> bytes:
    """uint8 [S, S, 3] -> PNG bytes (deterministic: fixed compression, no metadata)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()
