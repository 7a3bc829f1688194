"""Short free-text feedback -> structured edits of a session's preference, against the dataset's attribute vocabulary.

Clauses are separated by "," ";" or " and ". Each clause is one of
    "Color: blue" / "colour blue" / "style: formal"   set that key (key aliases in KEY_ALIASES)
    "in blue" / "blue" / "more formal"                set the key whose vocabulary holds the value
    "not: striped" / "no denim" / "less formal"       avoid the value (the preference moves off it)
    "more like #2" / "like 2"                         copy candidate 2's caption values into the preference
    "alternatives" / "show alternatives"              same preference, fresh samples
A value matches a vocabulary entry (or, on the synthetic data, a synonym) exactly, else the single entry that
contains all its words ("blue" -> "navy blue"). Anything else raises FeedbackError naming the clause.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from dualfashion_jax.data.format import SafeDataset
from dualfashion_jax.data.synthetic import attributes as A
from dualfashion_jax.text.tokenizer import CAPTION_KEYS, UNKNOWN, parse_caption

KEY_ALIASES = {"color": "Color", "colour": "Color", "material": "Material", "fabric": "Material",
               "pattern": "Material", "design": "Design features", "features": "Design features",
               "design features": "Design features", "feature": "Design features", "style": "Clothing Fashion Style",
               "clothing fashion style": "Clothing Fashion Style", "fashion style": "Clothing Fashion Style"}
_ALTERNATIVES = {"alternatives", "show alternatives", "alternative", "more options", "other options",
                 "something else", "show me alternatives", "try again"}
_LIKE = re.compile(r"^(?:more\s+)?(?:like|similar to)\s*#?\s*(\d+)$|^#\s*(\d+)$")
_NEGATE = re.compile(r"^(?:not|no|without|avoid|less|never)\b\s*:?\s*(.+)$")
_SET = re.compile(r"^(?:in|more|make it|i want|want)\b\s*:?\s*(.+)$")
_SPLIT = re.compile(r"\s*(?:[,;]|\band\b)\s*")
MAX_CHARS = 500


class FeedbackError(ValueError):
    """Feedback that cannot be parsed; the message is meant for the user."""


def _norm(s: str) -> str:
    return " ".join(re.sub(r"[^\w#\s'-]", " ", s.lower()).split())


class Vocabulary:
    """Per caption key: canonical values and their lower-case spellings (values + synonyms) -> canonical value."""

    def __init__(self, values: Mapping[str, Sequence[str]], synonyms: Mapping[str, Mapping[str, str]] | None = None):
        self.values = {k: tuple(dict.fromkeys(v)) for k, v in values.items()}
        self.spellings: dict[str, dict[str, str]] = {k: {_norm(v): v for v in vs} for k, vs in self.values.items()}
        for k, syn in (synonyms or {}).items():
            self.spellings.setdefault(k, {}).update({_norm(s): v for s, v in syn.items()})

    @classmethod
    def from_dataset(cls, ds: SafeDataset) -> "Vocabulary":
        """Values seen in text/item_info.json; the synthetic world's synonyms too."""
        values: dict[str, list[str]] = {k: [] for k in CAPTION_KEYS}
        for info in ds.item_info.values():
            for k in CAPTION_KEYS:
                v = info["elements"].get(k)
                if isinstance(v, str) and v.strip() and v != UNKNOWN:
                    values[k].append(v.strip())
        syn = None
        if ds.meta.get("source") == "synthetic":
            syn = {k: {s: names[0] for names in A.SYNONYMS[k] for s in names} for k in CAPTION_KEYS}
        return cls({k: sorted(set(v), key=v.index) for k, v in values.items()}, syn)

    def resolve(self, text: str, key: str | None = None) -> tuple[str, str]:
        """(key, canonical value) of `text`; exact spelling first, then the one entry containing all its words."""
        q = _norm(text)
        keys = [key] if key else list(self.spellings)
        exact = {(k, self.spellings[k][q]) for k in keys if q in self.spellings[k]}
        if not exact:
            words = set(q.split())
            exact = {(k, v) for k in keys for s, v in self.spellings[k].items() if words and words <= set(s.split())}
        if len(exact) == 1:
            return next(iter(exact))
        where = f"{key} " if key else ""
        if not exact:
            known = "; ".join(f"{k}: {', '.join(self.values[k][:10])}" for k in keys if self.values.get(k))
            raise FeedbackError(f"unknown {where}value {text!r}; known values: {known}")
        raise FeedbackError(f"{text!r} is ambiguous: {', '.join(sorted(f'{k}={v!r}' for k, v in exact))}; "
                            "say which, e.g. 'Color: navy blue'")


def parse(text: str, vocab: Vocabulary) -> dict[str, Any]:
    """{"set": {key: value}, "avoid": {key: [values]}, "like": [candidate numbers], "alternatives": bool}."""
    if not isinstance(text, str) or not text.strip():
        raise FeedbackError("empty feedback; try e.g. 'Color: blue', 'not: striped', 'more like #2', 'alternatives'")
    if len(text) > MAX_CHARS:
        raise FeedbackError(f"feedback is {len(text)} characters; at most {MAX_CHARS}")
    out: dict[str, Any] = {"set": {}, "avoid": {}, "like": [], "alternatives": False}
    for raw in _SPLIT.split(text.strip()):
        clause = _norm(raw)
        if not clause:
            continue
        if clause in _ALTERNATIVES:
            out["alternatives"] = True
            continue
        m = _LIKE.match(clause)
        if m:
            out["like"].append(int(m.group(1) or m.group(2)))
            continue
        neg = _NEGATE.match(clause)
        body = neg.group(1) if neg else clause
        setter = None if neg else _SET.match(body)
        body = setter.group(1) if setter else body
        head = raw.partition(":")[0] if ":" in raw else ""
        if head and _norm(head) not in KEY_ALIASES and not _NEGATE.match(_norm(head) + " x"):
            raise FeedbackError(f"{raw.strip()!r}: unknown attribute {head.strip()!r}; use one of "
                                f"{sorted(set(KEY_ALIASES.values()))}")
        key, body = _split_key(body)
        k, v = vocab.resolve(body, key)
        if neg:
            out["avoid"].setdefault(k, [])
            if v not in out["avoid"][k]:
                out["avoid"][k].append(v)
        else:
            out["set"][k] = v
    if not (out["set"] or out["avoid"] or out["like"] or out["alternatives"]):
        raise FeedbackError(f"no instruction found in {text!r}")
    return out


def _split_key(body: str) -> tuple[str | None, str]:
    """'colour navy blue' -> ('Color', 'navy blue'): the longest key alias the clause starts with, if any."""
    aliases = [a for a in KEY_ALIASES if body.startswith(a + " ")]
    if not aliases:
        return None, body
    alias = max(aliases, key=len)
    return KEY_ALIASES[alias], body[len(alias):].strip()


def apply(preference: Mapping[str, str], avoid: Mapping[str, Sequence[str]], parsed: Mapping[str, Any],
          captions: Sequence[str], vocab: Vocabulary) -> tuple[dict[str, str], dict[str, list[str]]]:
    """The next (preference, avoid) after `parsed`; `captions` = the previous round's candidate captions (#1 first).

    An avoided value that is the current preference is replaced by the first vocabulary value not avoided.
    """
    pref = dict(preference)
    avoid_out = {k: list(v) for k, v in avoid.items()}
    for n in parsed["like"]:
        if not captions:
            raise FeedbackError(f"'more like #{n}': there are no candidates yet (ask for a round first)")
        if not 1 <= n <= len(captions):
            raise FeedbackError(f"'more like #{n}': the last round has candidates #1..#{len(captions)}")
        for k, v in parse_caption(captions[n - 1]).items():
            try:
                pref[k] = vocab.resolve(v, k)[1]
            except FeedbackError:
                continue  # a value the caption sampler made up: keep the current one
    for k, v in parsed["set"].items():
        pref[k] = v
        if v in avoid_out.get(k, []):
            avoid_out[k].remove(v)
    for k, vs in parsed["avoid"].items():
        for v in vs:
            if v not in avoid_out.setdefault(k, []):
                avoid_out[k].append(v)
    for k, vs in avoid_out.items():
        if pref.get(k) in vs:
            left = [v for v in vocab.values.get(k, ()) if v not in vs]
            pref[k] = left[0] if left else UNKNOWN
    return pref, {k: v for k, v in avoid_out.items() if v}
