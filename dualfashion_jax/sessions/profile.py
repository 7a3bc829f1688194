"""A user profile: per-category structured preference (the 4 caption keys) plus optional appearance attributes.

    {"name": str, "preference": {"<category name>" | "*": {"Color": ..., ...}}, "appearance": {...},
     "data_uid": int | None}
"*" is the fallback for categories without their own entry. Dataset users get their profile from the test split's
preference texts and the optional text/appearance.json; created users give theirs (`normalize`).
"""
from __future__ import annotations

import collections
from typing import Any, Mapping

from dualfashion_jax.data.format import SafeDataset
from dualfashion_jax.data.synthetic import appearance as appearance_lib
from dualfashion_jax.text.tokenizer import CAPTION_KEYS, UNKNOWN

ANY = "*"


def _check_pref(pref: Any, where: str) -> dict[str, str]:
    if not isinstance(pref, Mapping):
        raise ValueError(f"{where}: expected a dict with keys from {list(CAPTION_KEYS)}, got {type(pref).__name__}")
    unknown = sorted(set(pref) - set(CAPTION_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; expected a subset of {list(CAPTION_KEYS)}")
    bad = [k for k, v in pref.items() if not isinstance(v, str)]
    if bad:
        raise ValueError(f"{where}: value of {bad[0]!r} must be a string, got {pref[bad[0]]!r}")
    return {k: v.strip() for k, v in pref.items()}


def normalize(profile: Mapping[str, Any], categories: Mapping[int, str]) -> dict[str, Any]:
    """A validated profile. `preference` may be one 4-key dict (all categories) or {category name | "*": dict}."""
    if not isinstance(profile, Mapping):
        raise ValueError(f"profile: expected a dict, got {type(profile).__name__}")
    extra = sorted(set(profile) - {"name", "preference", "appearance", "data_uid"})
    if extra:
        raise ValueError(f"profile: unknown field(s) {extra}; expected name, preference, appearance, data_uid")
    pref = profile.get("preference", {})
    if isinstance(pref, Mapping) and set(pref) <= set(CAPTION_KEYS) and pref:
        pref = {ANY: pref}
    if not isinstance(pref, Mapping):
        raise ValueError(f"profile.preference: expected a dict, got {type(pref).__name__}")
    names = set(categories.values()) | {ANY}
    unknown = sorted(set(pref) - names)
    if unknown:
        raise ValueError(f"profile.preference: unknown categor(ies) {unknown}; expected '*' or one of "
                         f"{sorted(categories.values())}")
    out = {"name": str(profile.get("name", "")),
           "preference": {c: _check_pref(p, f"profile.preference[{c!r}]") for c, p in pref.items()},
           "appearance": appearance_lib.check(profile.get("appearance", {}), "profile.appearance"),
           "data_uid": profile.get("data_uid")}
    if out["data_uid"] is not None and not isinstance(out["data_uid"], int):
        raise ValueError(f"profile.data_uid: expected an int or None, got {out['data_uid']!r}")
    return out


def preference_for(profile: Mapping[str, Any], category: str) -> dict[str, str]:
    """The 4-key preference of `category` (its own entry, else "*", else all "Unknown")."""
    p = profile["preference"].get(category, profile["preference"].get(ANY, {}))
    return {k: p.get(k, UNKNOWN) for k in CAPTION_KEYS}


def dataset_profiles(ds: SafeDataset, split: str = "test") -> dict[int, dict[str, Any]]:
    """{uid: profile} of every user with a preference text in `split` (appearance where the dataset has it)."""
    cats, appearance = ds.categories, ds.appearance
    out = {}
    for uid, per in sorted(ds.preference(split).items()):
        pref = {cats[c]: dict(v.get("Frequency", {})) for c, v in per.items() if c in cats}
        out[uid] = normalize({"name": f"dataset user {uid}", "preference": pref,
                              "appearance": appearance.get(uid, {}), "data_uid": uid}, cats)
    return out


def typical_preferences(ds: SafeDataset, split: str = "train") -> dict[str, dict[str, str]]:
    """{category name: {caption key: its most frequent stated value}} over `split`'s preference texts ({} if none).

    Stage 2 trains on fully stated preference texts only, so a key the user has not stated (while others are) is
    sent as the typical user's value for that category (`model_preference`).
    """
    if not ds.has_text(f"{split}_preference.json"):
        return {}
    counts: dict[tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)
    cats = ds.categories
    for per in ds.preference(split).values():
        for c, v in per.items():
            for k, x in (v.get("Frequency", {}) if c in cats else {}).items():
                if k in CAPTION_KEYS and isinstance(x, str) and x.strip() and x != UNKNOWN:
                    counts[(cats[c], k)][x.strip()] += 1
    out: dict[str, dict[str, str]] = {}
    for (cat, k), cnt in sorted(counts.items()):
        out.setdefault(cat, {})[k] = min(cnt.items(), key=lambda kv: (-kv[1], kv[0]))[0]  # ties: alphabetical
    return out


def model_preference(preference: Mapping[str, str], typical: Mapping[str, str],
                     avoid: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The preference text's values: the stated ones, and when at least one is stated, "Unknown" keys replaced by
    `typical`'s unless avoided. Nothing stated stays all "Unknown" (a text the model trained on)."""
    pref = {k: preference.get(k, UNKNOWN) for k in CAPTION_KEYS}
    if all(v == UNKNOWN for v in pref.values()):
        return pref
    avoid = avoid or {}
    return {k: typical[k] if v == UNKNOWN and k in typical and typical[k] not in avoid.get(k, ()) else v
            for k, v in pref.items()}
