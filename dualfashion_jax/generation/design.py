"""The `design` task (DVBPR's preference-maximising design, issue #17): edit an existing catalogue item toward a user.

The item's image is VAE-encoded (posterior mean), noised to the intermediate sigma_k of the sampler's schedule
(k = round((1 - strength) * num_steps): strength 1 = from pure noise, small = a light edit) with noise keyed by
(seed, uid, item), then denoised from step k with the usual text guidance (the user's preference + the category
sentence, no outfit context) plus the DVBPR score term `samplers/score_guidance.py` with weight eta. One jitted,
batched program: encode -> noise -> guided Euler -> decode; it also returns the user's DVBPR score of the source
and the edited latents, the "score" side of DVBPR's score-vs-realism trade-off.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dualfashion_jax.diffusion.flow import inference_sigmas
from dualfashion_jax.generation import conditioning as cond
from dualfashion_jax.modeling.latents import encode_images
from dualfashion_jax.models import vae as vae_lib
from dualfashion_jax.models.dvbpr import DVBPR
from dualfashion_jax.samplers import score_guidance as sg
from dualfashion_jax.samplers.flow_euler import GuidanceConfig, initial_noise, sample_images


@dataclasses.dataclass(frozen=True)
class DesignSettings:
    """strength in (0, 1]: the share of the schedule re-run; score: the DVBPR term (eta); guidance: text guidance."""

    strength: float = 0.6
    score: sg.ScoreGuidanceConfig = sg.ScoreGuidanceConfig(eta=1.0)
    guidance: GuidanceConfig = GuidanceConfig(mode="cfg", cfg_scale=4.0)
    seed: int = 0

    def __post_init__(self):
        if not 0.0 < float(self.strength) <= 1.0:
            raise ValueError(f"DesignSettings.strength must be in (0, 1], got {self.strength}")

    def to_json(self) -> dict:
        return {"strength": float(self.strength), "seed": int(self.seed),
                "score": {**dataclasses.asdict(self.score), "interval": list(self.score.interval)},
                "guidance": {**dataclasses.asdict(self.guidance), "interval": list(self.guidance.interval)}}

    @classmethod
    def from_json(cls, d) -> "DesignSettings":
        d = dict(d)
        return cls(strength=d["strength"], seed=d["seed"], score=sg.ScoreGuidanceConfig(**d["score"]),
                   guidance=GuidanceConfig(**d["guidance"]))

    @property
    def start_step(self) -> int:
        return start_step(self.strength, self.guidance.num_steps)


def start_step(strength: float, num_steps: int) -> int:
    """The Euler step an edit of `strength` in (0, 1] starts from: round((1 - strength) n), at most n - 1."""
    if not 0.0 < float(strength) <= 1.0:
        raise ValueError(f"edit strength must be in (0, 1], got {strength}")
    return min(num_steps - 1, int(round((1.0 - float(strength)) * num_steps)))


def noised(z: jax.Array, noise: jax.Array, guidance: GuidanceConfig, step: int) -> jax.Array:
    """SDEdit's start: clean latents z [B, h, w, C] moved to the flow's x_sigma at Euler step `step` of the
    sampler's schedule, (1 - sigma) z + sigma noise."""
    sigma = jnp.asarray(inference_sigmas(guidance.num_steps, guidance.shift))[step]
    return (1.0 - sigma) * z + sigma * noise


class DesignProgram:
    """Holds the bundle's model/T5/VAE and the DVBPR model; `__call__` edits a batch of items toward their users."""

    def __init__(self, bundle, dvbpr: DVBPR, settings: DesignSettings):
        self.bundle, self.settings = bundle, settings
        self.graphs, self.states = {}, {}
        for name, mod in (("model", bundle.model), ("t5", bundle.t5), ("vae", bundle.vae), ("dvbpr", dvbpr)):
            self.graphs[name], self.states[name] = nnx.split(mod)
        self.neg = tuple(jnp.asarray(a) for a in cond.negative_tokens(bundle.tokenizer))
        self._run = jax.jit(self._run_fn)

    def _run_fn(self, states, images, uid, iid, pref_ids, pref_mask, sent_ids, sent_mask):
        s = self.settings
        model, t5, vae, dv = (nnx.merge(self.graphs[n], states[n]) for n in ("model", "t5", "vae", "dvbpr"))
        z = encode_images(vae, images, sample=False)  # [B, h, w, C] model-space latents
        k = s.start_step
        x = noised(z, initial_noise(s.seed, uid, iid, 0, z.shape), s.guidance, k)  # the flow's x_sigma
        pref = cond.encode_segment(t5, pref_ids, pref_mask)  # [B, L, D]
        sent = cond.encode_segment(t5, sent_ids, sent_mask)
        neg = jnp.broadcast_to(cond.encode_segment(t5, *self.neg), pref.shape)
        score = sg.dvbpr_score_fn(dv, uid, vae)
        hook = sg.guide(score, s.score) if s.score.eta > 0 else None
        r_t = None if model.stage2 is None else model.stage2.target_role[...]
        lat = sample_images(model, x, None, neg, sent, pref, s.guidance, target_role=r_t, velocity_hook=hook,
                            start_step=k)  # [B, h, w, C]
        img = cond.to_uint8(vae_lib.decode_latents(vae, lat))  # [B, S, S, 3]
        return img, lat, score(z), score(lat)

    def __call__(self, images: np.ndarray, uids: np.ndarray, iids: np.ndarray, texts: dict[str, np.ndarray]):
        """uint8 [B, S, S, 3] source items, their target users and ids, token fields pref/sent_{ids,mask} [B, L]
        -> {images uint8 [B, S, S, 3], latents [B, h, w, C], score_before [B], score_after [B]}."""
        b = images.shape[0]
        for k in ("pref_ids", "pref_mask", "sent_ids", "sent_mask"):
            if k not in texts or texts[k].shape[0] != b:
                raise ValueError(f"design: texts[{k!r}] must be [B={b}, L] token ids")
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"design: images must be uint8 [B, S, S, 3], got {images.dtype} {images.shape}")
        out = self._run(self.states, jnp.asarray(images), jnp.asarray(uids, jnp.int32),
                        jnp.asarray(iids, jnp.uint32), *(jnp.asarray(texts[k], jnp.int32) for k in
                                                         ("pref_ids", "pref_mask", "sent_ids", "sent_mask")))
        img, lat, before, after = (np.asarray(a) for a in out)
        return {"images": img, "latents": lat, "score_before": before, "score_after": after}
