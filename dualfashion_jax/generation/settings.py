"""`GenSettings`: every knob of a PFITB/GOR run (samples, seed, image guidance, caption sampler, fixes vs original),
built from the task's config (`configs/generate.py:TASK`, `from_config`; `generate`'s flags override its fields).

Stored verbatim in the results' settings.json and run.json; a resumed run must use identical settings
(`check_resume`), so one results dir never mixes samples drawn under different settings.
Per-sample randomness is a pure function of (seed, uid, oid, sample index, stream) (`sample_key`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from dualfashion_jax.core import config as config_lib
from dualfashion_jax.samplers.flow_euler import GuidanceConfig
from dualfashion_jax.samplers.masked_caption import ORDERS
from dualfashion_jax.samplers.score_guidance import ScoreGuidanceConfig
from dualfashion_jax.samplers.templates import TEMPLATE_SOURCES
from dualfashion_jax.text.tokenizer import CAPTION_KEYS

TASKS = ("pfitb", "gor")
CAPTION_CONDS = ("original", "train")  # [pref, sent, T5(masked template)] (spec §5.2) | [pref, sent] (training)
# the caption branch's image stream: the context mean (spec §5.3, the original) | the blank's own generated image
# (clean, t = 0, as stage 1's i2t: the caption can name what was drawn) | the null tokens (as stage 3 trains)
CAPTION_IMAGES = ("context", "generated", "null")
GOR_OFFSETS = ("mlp", "projector")
# Streams folded after (seed, uid, oid, sample): keep image noise, captions, context samples and GOR orders apart.
STREAM_CAPTION, STREAM_CONTEXT, STREAM_ORDER = 1, 2, 3


@dataclasses.dataclass(frozen=True)
class GenSettings:
    """Sampling settings shared by PFITB, GOR and the one-request API (defaults: the original's values)."""

    num_images: int = 1               # N images per blank (GOR: K samples per row, each a full outfit)
    num_captions: int = 1             # M captions per blank (GOR: one caption per generated item)
    seed: int = 0
    guidance: GuidanceConfig = GuidanceConfig()
    caption_steps: int = 64
    template_source: str = "budget"   # GT-free length budget (fix of spec §7.2 item 12) | "ground_truth"
    caption_cond: str = "original"
    caption_image: str = "context"    # see CAPTION_IMAGES; caption j of a blank reads image j % num_images
    caption_temperature: float = 1.0  # caption token draws from p^(1/T) (1: the original; 0: argmax tokens)
    caption_order: str = "random"     # unmasking order: the original race | "confidence" (most probable first)
    caption_image_scale: float = 0.0  # > 0: caption guidance toward its image stream vs the null tokens (0 = off)
    caption_image_keys: str = "all"   # the values that guidance acts on: "all" or comma-separated CAPTION_KEYS
    mask_padding: bool = False        # True: the original prior also masks padding (spec §7.2 item 11)
    context_sample: bool = False      # False: VAE posterior MEAN for context items (fix of §7.2 item 16)
    gor_offset: str = "mlp"           # GOR: trained MatchingMLP (fix of §7.2 item 13) | original projector/gate
    score: ScoreGuidanceConfig = ScoreGuidanceConfig()  # DVBPR preference term (#17); eta 0 = off, the plain sampler

    def __post_init__(self):
        for name in ("num_images", "num_captions", "caption_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"GenSettings.{name} must be an int >= 1, got {v!r}")
        if self.template_source not in TEMPLATE_SOURCES:
            raise ValueError(f"GenSettings.template_source must be one of {TEMPLATE_SOURCES}, got {self.template_source!r}")
        if self.caption_cond not in CAPTION_CONDS:
            raise ValueError(f"GenSettings.caption_cond must be one of {CAPTION_CONDS}, got {self.caption_cond!r}")
        if self.caption_image not in CAPTION_IMAGES:
            raise ValueError(f"GenSettings.caption_image must be one of {CAPTION_IMAGES}, got {self.caption_image!r}")
        if not self.caption_temperature >= 0:
            raise ValueError(f"GenSettings.caption_temperature must be >= 0, got {self.caption_temperature!r}")
        if not self.caption_image_scale >= 0 or (self.caption_image_scale and self.caption_image == "null"):
            raise ValueError(f"GenSettings.caption_image_scale must be >= 0 and needs caption_image context or "
                             f"generated, got {self.caption_image_scale!r} with {self.caption_image!r}")
        if self.caption_image_keys != "all":
            names = self.caption_image_key_names()
            if not names or any(k not in CAPTION_KEYS for k in names) or self.template_source != "budget":
                raise ValueError(f"GenSettings.caption_image_keys must be 'all' or comma-separated keys of "
                                 f"{list(CAPTION_KEYS)} with template_source 'budget' (its values are the label "
                                 f"runs in that order), got {self.caption_image_keys!r} with {self.template_source!r}")
        if self.caption_order not in ORDERS:
            raise ValueError(f"GenSettings.caption_order must be one of {ORDERS}, got {self.caption_order!r}")
        if self.gor_offset not in GOR_OFFSETS:
            raise ValueError(f"GenSettings.gor_offset must be one of {GOR_OFFSETS}, got {self.gor_offset!r}")

    def caption_image_key_names(self) -> list[str]:
        return [k.strip() for k in self.caption_image_keys.split(",") if k.strip()]

    def caption_image_runs(self) -> tuple[int, ...] | None:
        """The template's label runs that caption guidance acts on (None: every position)."""
        if self.caption_image_keys == "all":
            return None
        return tuple(CAPTION_KEYS.index(k) for k in self.caption_image_key_names())

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["guidance"] = dataclasses.asdict(self.guidance)
        d["guidance"]["interval"] = list(self.guidance.interval)  # as its JSON round trip reads it back
        d["score"] = {**dataclasses.asdict(self.score), "interval": list(self.score.interval)}
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "GenSettings":
        d = dict(d)
        d["guidance"] = GuidanceConfig(**d.get("guidance", {}))
        d["score"] = ScoreGuidanceConfig(**d.get("score", {}))  # settings written before #17: eta 0
        return cls(**d)


def load_config(task: str, spec: str | None = None) -> mlc.ConfigDict:
    """The generation config: `spec` (FILE.py[:arg]) or the shipped `generate.py:<task>`."""
    return config_lib.load(spec or f"generate.py:{task}")


def from_config(c: mlc.ConfigDict) -> GenSettings:
    """GenSettings from a generation config (validates `scales` against `guidance`); errors name the flag."""
    scales_str = "7" if c.scales == "8,7,8" and c.guidance == "cfg" else c.scales  # cfg's default scale
    try:
        scales = [float(x) for x in scales_str.split(",")]
    except ValueError:
        raise ValueError(f"--scales {scales_str!r}: expected comma-separated numbers") from None
    try:
        interval = tuple(float(x) for x in c.guidance_interval.split(","))
    except ValueError:
        raise ValueError(f"--guidance-interval {c.guidance_interval!r}: expected two numbers lo,hi") from None
    if len(interval) != 2:
        raise ValueError(f"--guidance-interval {c.guidance_interval!r}: expected two numbers lo,hi")
    if c.original_guidance and c.match_train_input:
        raise ValueError("--original-guidance uses the original input x + lam c; it excludes --match-train-input")
    space = c.guidance_space or ("velocity" if c.original_guidance else "x0")
    g = {"mode": c.guidance, "num_steps": c.steps, "shift": c.shift, "match_train_input": not c.original_guidance,
         "space": space, "interval": interval}
    if c.guidance == "four_way":
        if len(scales) != 3:
            raise ValueError(f"--scales {scales_str!r}: four_way guidance needs 3 scales (text,context,preference)")
        g.update(text_scale=scales[0], context_scale=scales[1], preference_scale=scales[2])
    elif c.guidance == "cfg":
        if len(scales) != 1:
            raise ValueError(f"--scales {scales_str!r}: cfg guidance needs 1 scale")
        g.update(cfg_scale=scales[0])
    eta = float(c.get("dvbpr_eta", 0.0))  # config files written before #17 have no such field
    if eta < 0:
        raise ValueError(f"--dvbpr-eta {eta}: must be >= 0 (0 = no DVBPR preference guidance)")
    return GenSettings(num_images=c.num_images, num_captions=c.num_captions, seed=c.seed,
                       guidance=GuidanceConfig(**g), caption_steps=c.caption_steps, template_source=c.template,
                       caption_cond=c.caption_cond,  # config files written before #20 lack the caption fields
                       caption_image=c.get("caption_image", GenSettings.caption_image),
                       caption_temperature=float(c.get("caption_temperature", GenSettings.caption_temperature)),
                       caption_order=c.get("caption_order", GenSettings.caption_order),
                       caption_image_scale=float(c.get("caption_image_scale", GenSettings.caption_image_scale)),
                       caption_image_keys=c.get("caption_image_keys", GenSettings.caption_image_keys),
                       mask_padding=c.mask_padding,
                       context_sample=c.context_sample,
                       gor_offset=c.gor_offset, score=ScoreGuidanceConfig(eta=eta))


def check_resume(previous: Mapping[str, Any], current: Mapping[str, Any], where: str) -> None:
    """Raises if a results dir was started with different settings (names every differing field)."""
    diff = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
    if diff:
        show = {k: (previous.get(k), current.get(k)) for k in diff[:8]}
        raise ValueError(f"{where}: this results dir was generated with different settings {show} "
                         "(field: (before, now)); rerun with the same flags or choose a new --out")


def sample_key(seed: int, uid, oid, sample, stream: int) -> jax.Array:
    """Per-row keys [B]: fold_in(fold_in(fold_in(fold_in(key(seed), uid), oid), sample), stream)."""
    uid, oid, sample = jnp.broadcast_arrays(*(jnp.asarray(a).astype(jnp.uint32) for a in (uid, oid, sample)))

    def one(u, o, i):
        k = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), u), o), i)
        return jax.random.fold_in(k, stream)

    return jax.vmap(one)(uid.reshape(-1), oid.reshape(-1), sample.reshape(-1))


def gor_order(seed: int, uid: int, oid: int, sample: int, n: int = 4) -> list[int]:
    """The item generation order of GOR sample `sample` of row (uid, oid): a seeded permutation of range(n)."""
    key = sample_key(seed, uid, oid, sample, STREAM_ORDER)[0]
    return [int(i) for i in np.asarray(jax.random.permutation(key, n))]
