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
is part of the compiled program, the key is an input).
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
from dualfashion_jax.generation.sampling import Programs, make_mesh
from dualfashion_jax.generation.settings import GenSettings
from dualfashion_jax.modeling import frozen as frozen_lib
from dualfashion_jax.samplers.templates import build_template
from dualfashion_jax.text.tokenizer import CAPTION_KEYS

MAX_CONTEXT = 3
_CACHE: list[Programs] = []  # the last request's compiled programs (reused while bundle and settings match)


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


def _programs(bundle, settings: GenSettings) -> Programs:
    if not (_CACHE and _CACHE[0].bundle is bundle and _CACHE[0].settings == settings):
        _CACHE[:] = [Programs(bundle, settings, make_mesh(jax.local_devices()[:1]))]  # on the first local device
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
    for o in outfits:
        _check(preference, category, o)
    for key in keys:
        if len(key) != 2 or not all(isinstance(k, (int, np.integer)) and 0 <= k < 2**32 for k in key):
            raise ValueError(f"key: expected (uid, oid), two ints in [0, 2**32), got {key!r}")
    s = dataclasses.replace(settings or GenSettings(), num_images=num_images, num_captions=num_captions, seed=seed)
    if s.template_source != "budget":
        raise ValueError("recommend: a request has no ground-truth item; use template_source='budget'")
    progs = _programs(bundle, s)
    tok, size, c = bundle.tokenizer, bundle.image_size, len(outfits)
    ctx = np.full((c, MAX_CONTEXT, size, size, 3), 255, np.uint8)  # [C, 3, S, S, 3]
    for r, o in enumerate(outfits):
        for i, im in enumerate(o):
            ctx[r, i] = preprocess(Image.fromarray(np.asarray(im)), size)
    valid = (np.arange(MAX_CONTEXT)[None] < np.array([len(o) for o in outfits])[:, None]).astype(np.float32)  # [C, 3]
    rows = lambda a: np.repeat(a, c, axis=0)  # noqa: E731  [1, ...] -> [C, ...]
    p_ids, p_mask = tok.encode([preference_text(preference, appearance)])
    s_ids, s_mask = tok.encode([sentence_text(category.strip())])
    t = build_template(tok, source="budget", value_lengths=bundle.value_lengths)
    uid, oid = (np.array([k[i] for k in keys], np.uint32) for i in (0, 1))  # [C]
    batch = {"uid": uid, "oid": oid, "image_idx": rows(np.arange(num_images)[None]),
             "caption_idx": rows(np.arange(num_captions)[None]), "ctx_valid": valid, "pref_ids": rows(p_ids),
             "pref_mask": rows(p_mask), "sent_ids": rows(s_ids), "sent_mask": rows(s_mask),
             "tmpl_ids": rows(t.ids[None]), "tmpl_mask": rows(t.attention_mask[None]),
             "tmpl_labels": rows(t.label_mask[None])}
    batch["ctx_latents"] = progs.encode(ctx, uid, oid)  # [C, 3, h, w, ch]; invalid slots are masked out
    lat, ids = progs.sample(batch)
    images = progs.decode(lat)  # [C, N, S, S, 3]
    return images, [[x.strip() for x in tok.decode(row)] for row in ids]
