"""A simulated user of the synthetic world: it knows its hidden favourite colour/material per category (truth/) and
its appearance, reads each round's candidates with the pixel oracle and answers with short feedback text.

Policy per round (one comma-separated message, the clauses a person would give):
  * a candidate shows the favourite colour and suits the appearance -> "more like #k" (the first such, one that
    also shows the favourite material first; PFITB, one generated slot);
  * the stated preference (after "more like #k" copies candidate k's caption values) lacks the favourite colour / material of the category -> "Color: x" / "Material: y";
  * candidates show a colour / material that does not suit the appearance (and is not the favourite) -> "not: z"
    (the most frequent such value);
  * otherwise -> "alternatives" (fresh samples under the same preference).
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Mapping, Sequence

import numpy as np

from dualfashion_jax.data import oracle
from dualfashion_jax.data.synthetic import appearance as appearance_lib
from dualfashion_jax.data.synthetic import attributes as A
from dualfashion_jax.data.synthetic.truth import Truth
from dualfashion_jax.text.tokenizer import parse_caption


@dataclasses.dataclass(frozen=True)
class Judgement:
    """Per candidate [N]: decoded colour/material/category and whether each hits the hidden targets."""

    colour: np.ndarray
    material: np.ndarray
    category: np.ndarray
    colour_hit: np.ndarray
    material_hit: np.ndarray
    fits: np.ndarray


class SimulatedUser:
    """The oracle user `uid` (its truth row and appearance); `judge` scores candidates, `feedback` answers."""

    def __init__(self, truth: Truth, uid: int, appearance: Mapping[str, str] | None, shapes: str = "procedural"):
        self.row = int(truth.user_rows(np.asarray([uid]))[0])
        self.truth, self.uid, self.shapes = truth, int(uid), shapes
        self.appearance = dict(appearance or {})
        self.bad = appearance_lib.unsuited(self.appearance)

    def favourite(self, category: int) -> tuple[int, int]:
        """(colour, material) indices the user prefers for `category`."""
        return int(self.truth.fav_colour[self.row, category]), int(self.truth.fav_material[self.row, category])

    def judge(self, images: np.ndarray, category: int) -> Judgement:
        """images uint8 [N, S, S, 3] of one requested category."""
        dec = oracle.decode_attributes(np.asarray(images), self.shapes)
        fc, fm = self.favourite(category)
        return Judgement(dec["colour"], dec["material"], dec["category"], dec["colour"] == fc, dec["material"] == fm,
                         appearance_lib.suits(self.appearance, dec["colour"], dec["material"]))

    def feedback(self, judgements: Sequence[tuple[int, Judgement]], preference: Mapping[str, Mapping[str, str]],
                 category_names: Mapping[int, str], captions: Sequence[str] = ()) -> str:
        """The message after a round: judgements [(category, Judgement)] of every generated slot; `captions`: the
        round's candidate captions (#1 first), what "more like #k" copies into the preference."""
        clauses = []
        liked = self.liked(judgements[0][1]) if len(judgements) == 1 else None
        if liked is not None:
            clauses.append(f"more like #{liked + 1}")
            name = category_names[judgements[0][0]]
            copied = parse_caption(captions[liked]) if liked < len(captions) else {}
            preference = {**preference, name: {**preference[name], **copied}}
        for key, pick, vocab in (("Color", 0, A.COLORS), ("Material", 1, A.MATERIALS)):
            wants = {vocab[self.favourite(c)[pick]] for c, _ in judgements}
            for c, _ in judgements:
                want = vocab[self.favourite(c)[pick]]
                if preference[category_names[c]].get(key) != want and len(wants) == 1:
                    clauses.append(f"{key}: {want}")
                    break
        unsuited = collections.Counter()
        for c, j in judgements:
            fc, fm = self.favourite(c)
            unsuited.update(A.COLORS[v] for v in j.colour if v in self.bad["colour"] and v != fc)
            unsuited.update(A.MATERIALS[v] for v in j.material if v in self.bad["material"] and v != fm)
        if unsuited:
            clauses.append(f"not: {sorted(unsuited.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]}")
        return ", ".join(clauses) or "alternatives"

    def liked(self, j: Judgement) -> int | None:
        """The candidate to point at: favourite colour and suits the appearance (favourite material first)."""
        good = j.colour_hit & j.fits
        for pick in (good & j.material_hit, good):
            if pick.any():
                return int(np.flatnonzero(pick)[0])
        return None
