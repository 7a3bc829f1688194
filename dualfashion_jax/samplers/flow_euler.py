"""SD3 FlowMatchEuler image sampler with the original 4-way guidance, in one batched forward per step.

Schedule: diffusers' `FlowMatchEulerDiscreteScheduler(shift=3.0).set_timesteps(n)` reproduced exactly
(`diffusion.flow.inference_sigmas`), Euler x <- x + (s_{i+1} - s_i) v in fp32, inside `lax.fori_loop`.

Guidance (spec §5.1), branches stacked on a new leading axis [4, B, ...] and the model vmapped over it, so a
batch sharded over devices stays local (each device runs its own rows' 4 branches; no re-layout of [4B]):
  (0) x         with [neg, neg]        (T) x         with [neg, sentence]
  (M) x + lam c with [neg, sentence]   (P) x + lam c with [pref, sentence]
  v = v0 + sT (vT - v0) + sM (vM - vT) + sP (vP - vM), defaults sT = 8, sM = 7, sP = 8, lam = 0.1.
A branch whose weight in that sum is 0 is not run (`GuidanceConfig.branches`; e.g. sT = sM = 1 needs only M, P).
The original feeds x + lam c (no (1-lam), no r_t) although training fed (1-lam) x_t(z0 + r_t) + lam m c
(spec §7.2 item 7). `match_train_input=True` offers the train-consistent input instead: every branch gets
(1-lam) (x + (1-sigma) r_t) + lam m c, with m = 1 for (M, P) and 0 for (0, T), and r_t only if given.
Guidance space: training supervises x0_hat = x_in - sigma F (spec §2.1), so by default (`space="x0"`) each
branch's x0_hat is turned into its velocity for the state x, (x - x0_hat) / sigma, before the weighted sum;
mixing the raw F (`space="velocity"`, the original) adds terms like -sP lam c / sigma from the branch inputs.
Defaults: x0 space + train input; `GuidanceConfig.original()` (`generate --original-guidance`) restores both.
The texts are whatever segments the caller encodes: the original uses the negative prompt NEGATIVE_PROMPT for
"neg", which training never saw (its unconditional text was T5(" "), spec §7.2 item 9).
Modes: "four_way" (the original; all scales 0 -> "none"), "cfg" (v0 + s (vP - v0)), "none" (vP only).
`interval=(lo, hi)` applies the guidance only at steps with lo <= sigma <= hi and uses the fully conditional vP
elsewhere (= every scale 1; Kynkaanniemi et al. 2024, "guidance in a limited interval"); the default (0, 1)
guides every step, as the original does.
Optional hooks (issue #17): `velocity_hook(x, v, sigma) -> v` edits the guided velocity of each step (the DVBPR
preference-maximising term, `samplers/score_guidance.py`); `start_step` > 0 starts the integration at sigma_start
from a partially noised x_init (editing an existing item: `generation/design.py`).
Initial noise is a pure function of (seed, uid, oid, sample index), so every sample is reproducible
(the original drew unseeded bf16 noise). The state x stays fp32 between steps (the original cast it back to
bf16 after each fp32 Euler update); the model computes in its configured dtype.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from dualfashion_jax.diffusion.flow import NUM_TRAIN_TIMESTEPS, inference_sigmas
from dualfashion_jax.diffusion.pure_fn import as_pure

GUIDANCE_MODES = ("four_way", "cfg", "none")
GUIDANCE_SPACES = ("x0", "velocity")
# The original's negative prompt (spec §5.1); T5-encode it with its attention mask into a [B, L, D] segment.
NEGATIVE_PROMPT = ("low quality, blurry, low resolution, backlit, cartoon, animated, deformed, oversaturated, "
                   "undersaturated, out of frame")


@dataclasses.dataclass(frozen=True)
class GuidanceConfig:
    """Image-sampler settings; defaults are the original PFITB/GOR ones (spec §5.1)."""
    mode: str = "four_way"
    text_scale: float = 8.0
    context_scale: float = 7.0
    preference_scale: float = 8.0
    cfg_scale: float = 7.0           # "cfg" mode only
    matching_lambda: float = 0.1
    match_train_input: bool = True   # False = the original inference input x + lam c
    space: str = "x0"                # "velocity" = the original: mix the raw network outputs
    num_steps: int = 28
    shift: float = 3.0
    interval: tuple[float, float] = (0.0, 1.0)  # sigma range with guidance; vP alone outside (the original: all)

    def __post_init__(self):
        if self.mode not in GUIDANCE_MODES:
            raise ValueError(f"GuidanceConfig.mode: expected one of {GUIDANCE_MODES}, got {self.mode!r}")
        if self.space not in GUIDANCE_SPACES:
            raise ValueError(f"GuidanceConfig.space: expected one of {GUIDANCE_SPACES}, got {self.space!r}")
        lo, hi = (float(v) for v in self.interval)  # a JSON round trip gives a list
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"GuidanceConfig.interval: expected 0 <= lo <= hi <= 1 (sigmas), got {self.interval}")
        object.__setattr__(self, "interval", (lo, hi))
        if self.num_steps < 1:
            raise ValueError(f"GuidanceConfig.num_steps must be >= 1, got {self.num_steps}")

    @classmethod
    def original(cls, **kw) -> "GuidanceConfig":
        """The original sampler: input x + lam c, branches mixed in velocity space (spec §5.1)."""
        return cls(**{"match_train_input": False, "space": "velocity", **kw})

    @property
    def effective_mode(self) -> str:
        """The original skips guidance (runs only P) when all three 4-way scales are 0."""
        if self.mode == "four_way" and self.text_scale == self.context_scale == self.preference_scale == 0:
            return "none"
        return self.mode

    @property
    def branch_weights(self) -> dict[str, float]:
        """four_way's guided velocity as a sum w_b v_b over the branches 0, T, M, P (the weights sum to 1)."""
        st, sm, sp = self.text_scale, self.context_scale, self.preference_scale
        return {"0": 1.0 - st, "T": st - sm, "M": sm - sp, "P": sp}

    @property
    def branches(self) -> tuple[str, ...]:
        """The branches the sampler runs: four_way skips those of weight 0 (sT = sM = 1: v = vM + sP (vP - vM)
        needs only M and P, half the forwards), keeping P for the steps outside `interval`."""
        mode = self.effective_mode
        if mode != "four_way":
            return {"cfg": ("0", "P"), "none": ("P",)}[mode]
        w = self.branch_weights
        return tuple(b for b in "0TMP" if w[b] != 0 or (b == "P" and self.interval != (0.0, 1.0)))

    @property
    def num_branches(self) -> int:
        return len(self.branches)


def initial_noise(seed: int, uid, oid, sample_idx, latent_shape: tuple[int, ...]) -> jax.Array:
    """N(0, I) latents [B, H, W, C] fp32; row i uses key fold_in(fold_in(fold_in(key(seed), uid_i), oid_i), idx_i).

    uid, oid and sample_idx are scalars or int arrays [B] (broadcast to the batch size latent_shape[0]).
    """
    b = latent_shape[0]
    uid, oid, idx = (jnp.broadcast_to(jnp.asarray(a, jnp.uint32), (b,)) for a in (uid, oid, sample_idx))

    def one(u, o, i):
        key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), u), o), i)
        return jax.random.normal(key, latent_shape[1:], jnp.float32)

    return jax.vmap(one)(uid, oid, idx)


def _check(x, offset, neg, sentence, pref):
    if x.ndim != 4:
        raise ValueError(f"image sampler: latents must be [B, H, W, C], got {x.shape}")
    if offset is not None and offset.shape != x.shape:
        raise ValueError(f"image sampler: context offset {offset.shape} must match the latents {x.shape}")
    for name, e in (("neg_emb", neg), ("sentence_emb", sentence), ("pref_emb", pref)):
        if e.ndim != 3 or e.shape[0] != x.shape[0] or e.shape[1:] != neg.shape[1:]:
            raise ValueError(f"image sampler: {name} must be [B, L, D] = [{x.shape[0]}, *{neg.shape[1:]}], "
                             f"got {e.shape}")


def branch_texts(neg: jax.Array, sentence: jax.Array, pref: jax.Array, cfg: GuidanceConfig) -> jax.Array:
    """The guidance branches' texts stacked on a new leading axis: [n, B, 2L, D] (constant over the steps)."""
    cat = lambda *s: jnp.concatenate(s, axis=1)  # noqa: E731  [B, 2L, D]
    txt = {"0": (neg, neg), "T": (neg, sentence), "M": (neg, sentence), "P": (pref, sentence)}
    return jnp.stack([cat(*txt[b]) for b in cfg.branches], axis=0)


def branch_latents(x: jax.Array, sigma: jax.Array, offset: jax.Array | None, cfg: GuidanceConfig,
                   target_role: jax.Array | None = None) -> jax.Array:
    """The guidance branches' latent inputs stacked on a new leading axis: [n, B, H, W, C] (order as branch_texts)."""
    lam = cfg.matching_lambda
    c = jnp.zeros_like(x) if offset is None else offset.astype(jnp.float32)
    if cfg.match_train_input:
        z = x if target_role is None else x + (1.0 - sigma) * target_role.astype(jnp.float32)
        plain, with_ctx = (1.0 - lam) * z, (1.0 - lam) * z + lam * c
    else:
        plain, with_ctx = x, x + lam * c
    lat = {"0": plain, "T": plain, "M": with_ctx, "P": with_ctx}
    return jnp.stack([lat[b] for b in cfg.branches], axis=0)


def combine(v: jax.Array, cfg: GuidanceConfig, sigma: jax.Array | float = 1.0) -> jax.Array:
    """Guided velocity [B, ...] from the stacked branch velocities [n, B, ...] (`cfg.branches`, fp32); outside
    `cfg.interval` (by the step's sigma) the fully conditional branch vP."""
    v = v.astype(jnp.float32)
    mode, branches = cfg.effective_mode, cfg.branches
    if mode == "none":
        return v[0]
    if mode == "cfg":
        guided = v[0] + cfg.cfg_scale * (v[1] - v[0])
    elif len(branches) == 4:  # the original's formula, term by term
        v0, vt, vm, vp = v[0], v[1], v[2], v[3]
        guided = v0 + cfg.text_scale * (vt - v0) + cfg.context_scale * (vm - vt) + cfg.preference_scale * (vp - vm)
    else:  # the same sum without the weight-0 branches
        w = cfg.branch_weights
        guided = sum(w[b] * v[i] for i, b in enumerate(branches))
    if cfg.interval == (0.0, 1.0):
        return guided
    lo, hi = cfg.interval
    return jnp.where((sigma >= lo) & (sigma <= hi), guided, v[branches.index("P")])  # P is kept for this


def sample_images(model_fn: Callable[..., tuple[Any, Any]], x_init: jax.Array, offset: jax.Array | None,
                  neg_emb: jax.Array, sentence_emb: jax.Array, pref_emb: jax.Array, cfg: GuidanceConfig,
                  target_role: jax.Array | None = None,
                  velocity_hook: Callable[[jax.Array, jax.Array, jax.Array], jax.Array] | None = None,
                  start_step: int = 0) -> jax.Array:
    """Integrates the flow from noise x_init [B, H, W, C] to clean model-space latents (fp32).

    model_fn has the DualMMDiT signature (x_img, txt, t, *, heads, text_logits_len) -> (velocity, logits);
    offset is the context offset c = MatchingMLP(mean ctx + r_c) [B, H, W, C] (eval mode), or None (no context);
    the three text embeddings are T5 segments [B, L, D] (with attention masks, spec §1.3).
    Under jit, pass the model's state as an argument (`jax.jit(lambda st, *a: sample_images(nnx.merge(g, st),
    *a, cfg))`): a module closed over by jit would be baked into the program as constants.
    """
    _check(x_init, offset, neg_emb, sentence_emb, pref_emb)
    if not 0 <= int(start_step) < cfg.num_steps:
        raise ValueError(f"image sampler: start_step must be in [0, {cfg.num_steps}), got {start_step}")
    model_fn = as_pure(model_fn)  # an nnx.Module is re-merged inside the loop (see diffusion/pure_fn.py)
    sigmas = jnp.asarray(inference_sigmas(cfg.num_steps, cfg.shift))  # [n + 1]
    branch_shape = (cfg.num_branches, x_init.shape[0])  # (n, B)
    # one model call per branch, batched by vmap: the model sees [B] rows (its batch-axis constraints keep
    # them on their devices; the branch axis is unsharded), instead of a concatenated [nB] batch
    model_v = jax.vmap(lambda lat, txt, t: model_fn(lat, txt, t, heads=("image",), text_logits_len=None)[0])

    txt = branch_texts(neg_emb, sentence_emb, pref_emb, cfg)  # [n, B, 2L, D]

    def step(i, x):
        s, s_next = sigmas[i], sigmas[i + 1]
        lat = branch_latents(x, s, offset, cfg, target_role)  # [n, B, H, W, C]
        t = jnp.full(branch_shape, s * NUM_TRAIN_TIMESTEPS, jnp.float32)  # [n, B]
        v = model_v(lat, txt, t).astype(jnp.float32)  # [n, B, H, W, C]
        if cfg.space == "x0":  # branch x0_hat = x_in - s F (as trained) -> velocity of the state: (x - x0_hat) / s
            v = (x[None] - (lat - s * v)) / s  # s > 0 at every step (sigmas[n] = 0 is only a target)
        v = combine(v, cfg, s)
        if velocity_hook is not None:
            v = velocity_hook(x, v, s)
        return x + (s_next - s) * v

    return jax.lax.fori_loop(int(start_step), cfg.num_steps, step, x_init.astype(jnp.float32))
