"""GOR, generative outfit recommendation (spec §5.4): all 4 items of an outfit generated one after another,
each conditioned on the previously generated ones.

K samples per row; sample k generates the slots in its own order, a permutation derived from
(seed, uid, oid, k) (`settings.gor_order`; the original drew it from an unseeded torch.randint). At step j the
context is the last <= 3 GENERATED latents (none -> the zero latent, as the original's first item): their mean
feeds the stage-2 offset for the image and is the caption branch's image stream. Every (row, sample) is one
chain on the batch axis, so rows x samples run together; the 4 steps are 4 calls of the same compiled program.

Offset network (fix of spec §7.2 item 13): by default the TRAINED stage-2 path, offset = MatchingMLP(mean ctx
+ r_c), the module the training script optimises. The original GOR script instead used an untrained
`stage2_context_projector` + `stage2_context_gate` (offset = r_t + sigmoid(gate) Conv1x1(mean ctx + r_c)), which
with a released-script checkpoint stays zero and ignores the previous items. It stays reachable with
`gor_offset="projector"` for checkpoints that hold those modules (converted with --stage2-variant gor_projector).
Image k of slot s uses noise index k * 4 + s; its caption j uses index (k * 4 + s) * M + j.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from dualfashion_jax.data.examples import TaskRow
from dualfashion_jax.generation.outputs import RowResult
from dualfashion_jax.generation.sampling import Programs, pad_rows
from dualfashion_jax.generation.settings import gor_order

OUTFIT = 4
CONTEXT = 3  # at most the last 3 generated items condition the next one


def history_context(history: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Context of step `step` from the generated latents so far, history [C, step, h, w, ch] (order of
    generation): (latents [C, 3, h, w, ch] = the last <= 3, zero-padded; valid [C, 3] float32)."""
    c = history.shape[0]
    last = history[:, max(0, step - CONTEXT): step]  # [C, <=3, h, w, ch]
    pad = CONTEXT - last.shape[1]
    lat = np.concatenate([last, np.zeros((c, pad) + history.shape[2:], np.float32)], axis=1) if pad else last
    valid = np.concatenate([np.ones((c, last.shape[1]), np.float32), np.zeros((c, pad), np.float32)], axis=1)
    return lat.astype(np.float32), valid


def generate_gor(programs: Programs, inputs, rows: Sequence[TaskRow], batch_size: int,
                 n_real: int | None = None) -> list[RowResult]:
    """All samples of `rows` (1..batch_size rows, padded); RowResults of the first `n_real` rows."""
    s = programs.settings
    if not rows:
        raise ValueError("generate_gor: empty row list")
    k_samples, m = s.num_images, s.num_captions
    chains = [(pos, r, k, gor_order(s.seed, r.uid, r.oid, k, OUTFIT)) for pos, r in enumerate(rows)
              for k in range(k_samples)]
    texts = {(r.index, slot): inputs.texts(r, slot) for r in rows for slot in range(OUTFIT)}
    n_chains = batch_size * k_samples
    history = None  # [C, j, h, w, ch]
    captions_ids = []
    for j in range(OUTFIT):
        cols: dict[str, list] = {}
        for _, r, k, order in chains:
            slot = order[j]
            fields = {"uid": r.uid, "oid": r.oid, "image_idx": [k * OUTFIT + slot],
                      "caption_idx": (k * OUTFIT + slot) * m + np.arange(m), **texts[(r.index, slot)]}
            for key, v in fields.items():
                cols.setdefault(key, []).append(np.asarray(v))
        host = {key: np.stack(v) for key, v in cols.items()}
        host["uid"], host["oid"] = host["uid"].astype(np.uint32), host["oid"].astype(np.uint32)
        if history is None:
            lat_shape = (len(chains), 0) + tuple(programs.bundle.latent_hw) + (programs.bundle.model.config.in_channels,)
            history = np.zeros(lat_shape, np.float32)
        host["ctx_latents"], host["ctx_valid"] = history_context(history, j)
        lat, ids = programs.sample(pad_rows(host, n_chains))
        history = np.concatenate([history, lat[: len(chains), :1]], axis=1)
        captions_ids.append(ids[: len(chains)])  # [C, M, L]
    images = programs.decode(pad_rows({"z": history}, n_chains)["z"])[: len(chains)]  # [C, 4, S, S, 3] in generation order
    tok = programs.bundle.tokenizer
    n_real = len(rows) if n_real is None else n_real
    results: dict[int, RowResult] = {}
    for c, (pos, r, k, order) in enumerate(chains):
        if pos >= n_real:
            continue
        res = results.setdefault(r.index, RowResult(
            row=r, task="gor", blank_slots=tuple(range(OUTFIT)), images={}, captions={},
            templates={slot: inputs.template(r.outfit[slot]).text for slot in range(OUTFIT)}, orders={}))
        res.orders[k] = list(order)
        for j, slot in enumerate(order):
            res.images[(slot, k)] = images[c, j]
            caps = tok.decode(captions_ids[j][c])
            res.captions[(slot, k)] = caps[0].strip()
            for jj in range(1, m):
                res.extra_captions.setdefault((slot, k), []).append(caps[jj].strip())
    return list(results.values())
