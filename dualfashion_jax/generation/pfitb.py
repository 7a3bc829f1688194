"""PFITB (spec §5.3): for each row, N images and M attribute captions of the blank item, conditioned on the
user's preference for the blank's category, the category sentence and the 3 visible items.

Per row batch (a fixed number of rows, the last one padded): context images -> VAE posterior mean (flag:
sample) -> mean latent -> stage-2 offset for the image sampler (4-way guidance by default) and the same mean
latent as the caption branch's image stream. Image k of row (uid, oid) starts from
`initial_noise(seed, uid, oid, k)`; caption j uses `sample_key(seed, uid, oid, j, STREAM_CAPTION)`, so a row's
outputs are identical whatever batch, padding or device count produced them.
Differences from the original, all switchable: every row (not the first 50), seeded noise, posterior-mean
context, GT-free caption template (`template_source="ground_truth"` restores the original's GT template).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from dualfashion_jax.data.examples import TaskRow
from dualfashion_jax.generation.outputs import RowResult
from dualfashion_jax.generation.sampling import Programs, pad_rows


def pfitb_batch(inputs, rows: Sequence[TaskRow], num_images: int, num_captions: int) -> dict[str, np.ndarray]:
    """Host arrays of one batch (without latents): context images, ids, token fields; one chain per row."""
    cols: dict[str, list] = {}
    for r in rows:
        ctx = [i for s, i in enumerate(r.outfit) if s != r.blank]  # the 3 visible items
        fields = {"ctx_images": inputs.item_images(ctx), "uid": r.uid, "oid": r.oid,
                  "image_idx": np.arange(num_images), "caption_idx": np.arange(num_captions),
                  "ctx_valid": np.ones(len(ctx), np.float32), **inputs.texts(r, r.blank)}
        for k, v in fields.items():
            cols.setdefault(k, []).append(np.asarray(v))
    out = {k: np.stack(v) for k, v in cols.items()}
    out["uid"], out["oid"] = out["uid"].astype(np.uint32), out["oid"].astype(np.uint32)
    return out


def generate_pfitb(programs: Programs, inputs, rows: Sequence[TaskRow], batch_size: int,
                   n_real: int | None = None) -> list[RowResult]:
    """Generates `rows` (1..batch_size rows, padded to batch_size) and returns RowResults of the first `n_real`
    (default all; the runner passes filler rows when a process has run out, so every process joins the program)."""
    s = programs.settings
    if not rows:
        raise ValueError("generate_pfitb: empty row list")
    host = pad_rows(pfitb_batch(inputs, rows, s.num_images, s.num_captions), batch_size)
    host["ctx_latents"] = programs.encode(host.pop("ctx_images"), host["uid"], host["oid"])
    lat, ids = programs.sample(host)
    images = programs.decode(lat)  # [B, N, S, S, 3]
    tok = programs.bundle.tokenizer
    results = []
    for b, r in enumerate(rows[: len(rows) if n_real is None else n_real]):
        caps = tok.decode(ids[b])
        tmpl = inputs.template(r.target).text
        results.append(RowResult(
            row=r, task="pfitb", blank_slots=(r.blank,),
            images={(r.blank, k): images[b, k] for k in range(s.num_images)},
            captions={(r.blank, j): caps[j].strip() for j in range(s.num_captions)},
            templates={r.blank: tmpl}))
    return results
