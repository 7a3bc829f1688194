"""The web API's request bodies (validated by pydantic) and the JSON form of the engine's sessions and rounds.

Generated candidate images travel inline as PNG data URLs (they live only in the session store); catalogue items
(outfit pieces, "shop the look") are linked by URL, so the browser caches them.
"""
from __future__ import annotations

import base64
from typing import Literal

import pydantic

TASKS = ("pfitb", "gor")


class _Body(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored


class NewUser(_Body):
    profile: dict


class NewSession(_Body):
    user_id: str = pydantic.Field(min_length=1)
    task: Literal["pfitb", "gor"]
    outfit_id: str | None = None


class NewRound(_Body):
    feedback: str | None = None
    n: int = pydantic.Field(4, ge=1)


def item_url(item_id: str) -> str:
    return f"/api/items/{item_id}.png"


def png_data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def candidate_json(c) -> dict:
    """`number` is what feedback calls it ("more like #1" is index 0)."""
    shop = [{"item_id": s["item_id"], "score": float(s["score"]), "image": item_url(s["item_id"])} for s in c.shop]
    return {"index": c.index, "number": c.index + 1, "caption": c.caption, "seed": c.seed,
            "image": png_data_url(c.image_png), "shop": shop}


def round_json(r) -> dict:
    return {"number": r.number, "feedback": r.feedback, "parsed": r.parsed, "preference": r.preference,
            "settings": r.settings, "candidates": [candidate_json(c) for c in r.candidates]}


def session_json(s) -> dict:
    return {"id": s.id, "user_id": s.user_id, "task": s.task, "created": s.created, "profile": s.profile,
            "outfit": [{"item_id": i or None, "category": c, "image": item_url(i) if i else None}  # "": a blank
                       for i, c in zip(s.outfit, s.categories)],
            "rounds": [round_json(r) for r in s.rounds]}


def validation_message(errors: list[dict]) -> str:
    """One readable line from pydantic/FastAPI validation errors: 'body.n: Input should be ... ; ...'."""
    parts = []
    for e in errors:
        loc = ".".join(str(p) for p in e.get("loc", ()))
        if e.get("type") == "json_invalid":
            parts.append(f"request body is not valid JSON ({e.get('ctx', {}).get('error', e.get('msg'))})")
        else:
            parts.append(f"{loc}: {e.get('msg')}")
    return "; ".join(parts)
