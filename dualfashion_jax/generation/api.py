"""One recommendation request without a dataset: a user's preference JSON, a category and 0-3 outfit images ->
generated item images and attribute captions (the PFITB program on a single chain).

    from dualfashion_jax.generation.bundle import load_bundle
    from dualfashion_jax.generation.api import recommend
    bundle = load_bundle("runs/stage2")                       # training workdir or converted checkpoints
    pref = {"Color": "black", "Material": "leather", "Design features": "zip", "Clothing Fashion Style": "street"}
    images, captions = recommend(bundle, pref, "boots", [top_u8, bag_u8], num_images=2, num_captions=2, seed=0)
`images` is uint8 [N, S, S, 3] (S = the model's image size); outfit images of any size are RGB-converted,
short-side resized and centre-cropped like the training data. With no outfit image, the context is the zero
latent (as GOR's first item). The request is keyed as (uid, oid) = (0, 0) unless `key=(uid, oid)` is given, so a
(seed, key) reproduces it exactly; varying `key` rather than `seed` draws new samples without recompiling (the seed
is part of the compiled program, the key is an input). `recommend_many` runs several independent requests
(another preference, category, outfit, key each; optionally starting from given images, SDEdit) as one batch.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Mapping, Sequence

import jax
import numpy as np
from PIL import Image

from dualfashion_jax.data.format import preference_text, sentence_text
from dualfashion_jax.data.images import preprocess
from dualfashion_jax.generation import design
from dualfashion_jax.generation.sampling import Programs, make_mesh
from dualfashion_jax.generation.settings import GenSettings
from dualfashion_jax.modeling import frozen as frozen_lib
from dualfashion_jax.samplers.templates import build_template
from dualfashion_jax.text.tokenizer import CAPTION_KEYS

MAX_CONTEXT = 3
CACHE_SIZE = 4
_CACHE: list[Programs] = []  # the last requests' compiled programs, most recent first


def _check(preference, category, outfit_images) -> None:
    if not isinstance(preference, Mapping):
        raise ValueError(f"preference: expected a dict with keys {list(CAPTION_KEYS)}, got {type(preference).__name__}")
    unknown = sorted(set(preference) - set(CAPTION_KEYS))
    if unknown:
        raise ValueError(f"preference: unknown key(s) {unknown}; expected a subset of {list(CAPTION_KEYS)}")
    if not isinstance(category, str) or not category.strip():
        raise ValueError(f"category: expected a non-empty category name, got {category!r}")
    if len(outfit_images) > MAX_CONTEXT:
        raise ValueError(f"outfit_images: at most {MAX_CONTEXT} images (the visible outfit items), got {len(outfit_images)}")
    for i, im in enumerate(outfit_images):
        a = np.asarray(im)
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[-1] != 3:
            raise ValueError(f"outfit_images[{i}]: expected a uint8 HxWx3 RGB array, got {a.dtype} {a.shape}")


def _programs(bundle, settings: GenSettings, start_step: int = 0) -> Programs:
    """The compiled programs of (bundle, settings, start_step), on the first local device; the last few are kept,
    so a session alternating plain and image-grounded rounds does not recompile."""
    for i, p in enumerate(_CACHE):
        if p.bundle is bundle and p.settings == settings and p.start_step == start_step:
            _CACHE.insert(0, _CACHE.pop(i))
            return p
    _CACHE.insert(0, Programs(bundle, settings, make_mesh(jax.local_devices()[:1]), start_step=start_step))
    del _CACHE[CACHE_SIZE:]
    return _CACHE[0]


def trained_with_appearance(bundle) -> bool:
    """Whether the bundle's stage 2 trained with the appearance in the preference text (its config's
    `data.preference_appearance`; a stage-3 workdir defers to its `init_from`). Converted checkpoints: False."""
    if bundle.info.get("kind") != "workdir":
        return False
    wd = pathlib.Path(bundle.info["source"])
    for _ in range(3):  # stage 3 -> stage 2 -> stage 1
        c = frozen_lib.workdir_config(wd)
        if "preference_appearance" in c.get("data", {}):
            return bool(c["data"]["preference_appearance"])
        if c.get("stage") == "stage2" or not c.get("init_from"):
            return False
        wd = frozen_lib.workdir_path(c["init_from"], wd)
        if not (wd / "config.json").is_file():
            return False
    return False


def recommend(bundle, preference: Mapping[str, str], category: str, outfit_images: Sequence[np.ndarray],
              num_images: int = 1, num_captions: int = 1, seed: int = 0,
              settings: GenSettings | None = None, key: tuple[int, int] = (0, 0),
              appearance: Mapping[str, str] | None = None) -> tuple[np.ndarray, list[str]]:
    """(images uint8 [N, S, S, 3], captions list[str] of length M) for one request (see module docstring).

    `settings` overrides every sampler knob (its num_images/num_captions/seed are replaced by the arguments).
    `appearance` is appended to the preference text (`data.format.preference_text`): pass it only for a
    checkpoint trained that way (`trained_with_appearance`).
    """
    images, captions = recommend_batch(bundle, preference, category, [outfit_images], [key], num_images,
                                       num_captions, seed, settings, appearance)
    return images[0], captions[0]


def recommend_batch(bundle, preference: Mapping[str, str], category: str,
                    outfits: Sequence[Sequence[np.ndarray]], keys: Sequence[tuple[int, int]], num_images: int = 1,
                    num_captions: int = 1, seed: int = 0, settings: GenSettings | None = None,
                    appearance: Mapping[str, str] | None = None) -> tuple[np.ndarray, list[list[str]]]:
    """C requests that differ only in their outfit images and key, as one sampler batch of C chains:
    (images uint8 [C, N, S, S, 3], captions [C][M]); row c equals `recommend(..., outfits[c], key=keys[c])`."""
    if len(outfits) != len(keys) or not outfits:
        raise ValueError(f"recommend_batch: expected as many outfits as keys (>= 1), got {len(outfits)} and "
                         f"{len(keys)}")
    return recommend_many(bundle, [Request(preference, category, o, k, appearance) for o, k in zip(outfits, keys)],
                          num_images, num_captions, seed, settings)


@dataclasses.dataclass(frozen=True)
class Request:
    """One chain of `recommend_many`. `start`: uint8 [S, S, 3] (every sample) or [N, S, S, 3] images the samples
    start from (SDEdit: encoded, noised to the `strength`'s sigma, denoised under this request's text)."""

    preference: Mapping[str, str]
    category: str
    outfit_images: Sequence[np.ndarray] = ()
    key: tuple[int, int] = (0, 0)
    appearance: Mapping[str, str] | None = None
    start: np.ndarray | None = None


def recommend_many(bundle, requests: Sequence[Request], num_images: int = 1, num_captions: int = 1, seed: int = 0,
                   settings: GenSettings | None = None, strength: float | None = None, chains: int = 1
                   ) -> tuple[np.ndarray, list[list[str]]]:
    """C independent requests (own preference, category, outfit, key) as one sampler batch of max(C, `chains`)
    chains (padded with copies of request 0, discarded): (images uint8 [C, N, S, S, 3], captions [C][M]); row c
    equals `recommend` of request c up to batch-size numerics, and bit for bit at the same `chains`.
    `strength` in (0, 1] with every request's `start` set: image-grounded samples (`design.noised`)."""
    if not requests:
        raise ValueError("recommend_many: expected at least one request")
    n_real = len(requests)
    requests = list(requests) + [requests[0]] * max(0, int(chains) - len(requests))
    for r in requests:
        _check(r.preference, r.category, r.outfit_images)
        key = r.key
        if len(key) != 2 or not all(isinstance(k, (int, np.integer)) and 0 <= k < 2**32 for k in key):
            raise ValueError(f"key: expected (uid, oid), two ints in [0, 2**32), got {key!r}")
    s = dataclasses.replace(settings or GenSettings(), num_images=num_images, num_captions=num_captions, seed=seed)
    if s.template_source != "budget":
        raise ValueError("recommend: a request has no ground-truth item; use template_source='budget'")
    starts = [r.start is not None for r in requests]
    if any(starts) != (strength is not None) or any(starts) != all(starts):
        raise ValueError("recommend_many: `strength` goes with a `start` image on every request (or neither)")
    k0 = 0 if strength is None else design.start_step(strength, s.guidance.num_steps)
    progs = _programs(bundle, s, k0)
    tok, size, c = bundle.tokenizer, bundle.image_size, len(requests)
    ctx = np.full((c, MAX_CONTEXT, size, size, 3), 255, np.uint8)  # [C, 3, S, S, 3]
    for i, r in enumerate(requests):
        for j, im in enumerate(r.outfit_images):
            ctx[i, j] = preprocess(Image.fromarray(np.asarray(im)), size)
    n_ctx = np.array([len(r.outfit_images) for r in requests])
    valid = (np.arange(MAX_CONTEXT)[None] < n_ctx[:, None]).astype(np.float32)  # [C, 3]
    rows = lambda a: np.repeat(a, c, axis=0)  # noqa: E731  [1, ...] -> [C, ...]
    p_ids, p_mask = tok.encode([preference_text(r.preference, r.appearance) for r in requests])  # [C, L]
    s_ids, s_mask = tok.encode([sentence_text(r.category.strip()) for r in requests])
    t = build_template(tok, source="budget", value_lengths=bundle.value_lengths)
    uid, oid = (np.array([r.key[i] for r in requests], np.uint32) for i in (0, 1))  # [C]
    batch = {"uid": uid, "oid": oid, "image_idx": rows(np.arange(num_images)[None]),
             "caption_idx": rows(np.arange(num_captions)[None]), "ctx_valid": valid, "pref_ids": p_ids,
             "pref_mask": p_mask, "sent_ids": s_ids, "sent_mask": s_mask,
             "tmpl_ids": rows(t.ids[None]), "tmpl_mask": rows(t.attention_mask[None]),
             "tmpl_labels": rows(t.label_mask[None])}
    batch["ctx_latents"] = progs.encode(ctx, uid, oid)  # [C, 3, h, w, ch]; invalid slots are masked out
    if k0:
        batch["start_latents"] = progs.encode(_starts(requests, num_images, size), uid, oid)  # [C, N, h, w, ch]
    lat, ids = progs.sample(batch)
    images = progs.decode(lat)[:n_real]  # [C, N, S, S, 3]
    return images, [[x.strip() for x in tok.decode(row)] for row in ids[:n_real]]


def _starts(requests: Sequence[Request], n: int, size: int) -> np.ndarray:
    """The requests' start images as uint8 [C, N, S, S, 3] (one image broadcast over the N samples)."""
    out = np.empty((len(requests), n, size, size, 3), np.uint8)
    for i, r in enumerate(requests):
        a = np.asarray(r.start)
        a = a[None] if a.ndim == 3 else a
        if a.dtype != np.uint8 or a.ndim != 4 or a.shape[0] not in (1, n) or a.shape[1:] != (size, size, 3):
            raise ValueError(f"requests[{i}].start: expected uint8 [{size}, {size}, 3] or [{n}, {size}, {size}, 3] "
                             f"(the model's image size), got {a.dtype} {a.shape}")
        out[i] = a
    return out
