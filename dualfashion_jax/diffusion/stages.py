"""The three training objectives (spec §2.3-2.5) composed from the schedule, conditioning and loss pieces.

Callables (all pure w.r.t. the arrays they get; pass the NNX modules' bound methods):
  model_fn(x_img [B,H,W,C] | None, txt [B,L,D], t [B], *, heads, text_logits_len) -> (img_out, logits)
      -- the `DualMMDiT.__call__` signature (docs/ARCHITECTURE.md); t on the 0..1000 scale.
  t5_fn(ids [B,L] int32, attention_mask [B,L] | None) -> [B,L,D]   -- the frozen T5 encoder.
  offset_fn(ctx_mean [B,H,W,C], dropout_key) -> c [B,H,W,C]   -- stage 2, train mode:
      `lambda m, k: model.stage2.offset(m, deterministic=False, rngs=k)` (explicit dropout key: no module RNG
      state is mutated, so it also works when the model is merged outside the grad trace).

Each `stageN_loss(key, batch, ...)` draws its randomness with `draw_stageN` and calls `stageN_loss_given`,
which is deterministic in the draws (tests pass fixed draws). Both return (scalar loss, metrics dict);
the scalar is a mean of per-example terms, so averaging equal micro-batches is exact.
T5 is run INSIDE the loss on the noised caption x_t (spec §1.3); its outputs are `stop_gradient`-ed.
NNX modules passed as model_fn / t5_fn are wrapped by `pure_fn.as_pure` (safe under lax.cond and under grad
when merged outside it); pass the module itself, not a lambda around it.

Batch keys (`data/keys.py`, the names data/examples.py emits; ids int32, masks int/bool, latents fp32 NHWC
model-space latents):
  stage 1: t2i_latents [B,H,W,C], t2i_ids [B,L] (T5'd without mask), i2t_latents [B',H,W,C],
           caption_ids [B',L], caption_label_mask [B',L]; with real_caption_ratio >= 0 also t2i_real_ids
           [B,L] (the t2i rows' structured captions, used as the prompt with that probability)
  stage 2: target_latents [B,H,W,C], context_latents [B,K,H,W,C], caption_ids [B,L], caption_label_mask
           [B,L], pref_ids/pref_mask [B,L], sentence_ids/sentence_mask [B,L]
  stage 3: caption_ids and caption_label_mask [B,L] or [B,A,L] (A augmentations per row), pref_ids/pref_mask,
           sentence_ids/sentence_mask [B,L]
Null prompts are passed precomputed: null_emb = T5(" ") padded with EOS to one segment [L, D];
null_emb_2x = T5(" ") padded to 2 segments [2L, D] (stage 2's [pref, sentence] text).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from dualfashion_jax.data import keys as K
from dualfashion_jax.diffusion import conditioning as cond
from dualfashion_jax.diffusion import flow, losses, masked_text
from dualfashion_jax.diffusion.pure_fn import as_pure

ModelFn = Callable[..., tuple[Any, Any]]
T5Fn = Callable[[jax.Array, Any], jax.Array]

PREFERENCE_DROPOUT_MODES = ("per_sample", "per_batch")
STAGE3_LOSSES = ("brier", "mdlm")
T2I_LATENTS, I2T_LATENTS = K.visual(K.LATENT, K.T2I), K.visual(K.LATENT, K.I2T)
TARGET_LATENTS, CONTEXT_LATENTS = K.visual(K.LATENT, K.TARGET), K.visual(K.LATENT, K.CONTEXT)


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Objective hyper-parameters; defaults are the original's (spec §2, §4)."""
    mask_id: int                        # tokenizer.mask_id ("<extra_id_0>"), never hard-coded
    shift: float = 1.0                  # training sigma-grid shift (SD3's 3.0 is NOT used for training)
    logit_mean: float = 0.0
    logit_std: float = 1.0
    text_dropout: float = 0.1           # per-sample null-prompt replacement of the image branch's text
    mask_eps: float = 1e-3              # log-linear schedule eps
    sampling_eps: float = 1e-3          # t in [sampling_eps, 1]
    antithetic: bool = True
    text_loss_norm: str = "batch_len"   # "batch_len" (original, / B*L) | "masked" (/ loss positions)
    caption_weight: float = 0.2         # L = L_img + caption_weight * L_txt
    real_caption_ratio: float = -1.0    # stage-1 t2i: P(prompt = the structured caption, not the re-caption);
                                        # the original's `train_real_cap_ratio`, -1 (never) as released
    matching_lambda: float = 0.1        # stage-2 lam
    context_dropout: float = 0.5        # stage-2 per-sample P(m = 0)
    preference_dropout: float = 0.5     # stage-2 P(drop the preference segment)
    preference_dropout_mode: str = "per_sample"  # "per_sample" (null segment) | "per_batch" (original)
    stage3_loss: str = "brier"          # "brier" (original) | "mdlm"

    def __post_init__(self):
        if self.text_loss_norm not in losses.TEXT_LOSS_NORMS:
            raise ValueError(f"LossConfig.text_loss_norm: expected one of {losses.TEXT_LOSS_NORMS}, "
                             f"got {self.text_loss_norm!r}")
        if self.preference_dropout_mode not in PREFERENCE_DROPOUT_MODES:
            raise ValueError(f"LossConfig.preference_dropout_mode: expected one of {PREFERENCE_DROPOUT_MODES}, "
                             f"got {self.preference_dropout_mode!r}")
        if self.stage3_loss not in STAGE3_LOSSES:
            raise ValueError(f"LossConfig.stage3_loss: expected one of {STAGE3_LOSSES}, got {self.stage3_loss!r}")
        if not (self.real_caption_ratio == -1.0 or 0.0 <= self.real_caption_ratio <= 1.0):
            raise ValueError(f"LossConfig.real_caption_ratio must be -1 (off) or in [0, 1], got {self.real_caption_ratio}")
        for name in ("text_dropout", "context_dropout", "preference_dropout", "matching_lambda"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"LossConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.mask_id < 0:
            raise ValueError(f"LossConfig.mask_id must be a token id >= 0, got {self.mask_id}")


def _require(batch: Mapping[str, Any], keys: tuple[str, ...], stage: str) -> None:
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ValueError(f"{stage} batch is missing key(s) {missing}; it has {sorted(batch)} "
                         f"(see dualfashion_jax/diffusion/stages.py for the expected keys and shapes)")


def _check_latents(x: jax.Array, name: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"batch[{name!r}]: expected NHWC latents [B, H, W, C], got shape {x.shape}")


def _t5(t5_fn: T5Fn, ids: jax.Array, mask: Any) -> jax.Array:
    """Frozen T5 on ids [B, L] -> [B, L, D]; no gradient flows into (or through) it."""
    return jax.lax.stop_gradient(t5_fn(ids.astype(jnp.int32), mask))


# ----------------------------------------------------------------------------------------------------------
# Draws (all randomness of one step), so the losses below are deterministic functions of them.
# ----------------------------------------------------------------------------------------------------------
def draw_image(key: jax.Array, latent_shape: tuple[int, ...]) -> dict[str, jax.Array]:
    """sigma_normal [B] (logit-normal pre-activation), noise [B,H,W,C], text_drop [B] uniforms."""
    k1, k2, k3 = jax.random.split(key, 3)
    b = latent_shape[0]
    return {"sigma_normal": jax.random.normal(k1, (b,), jnp.float32),
            "noise": jax.random.normal(k2, latent_shape, jnp.float32),
            "text_drop": jax.random.uniform(k3, (b,), jnp.float32)}


def draw_text(key: jax.Array, ids_shape: tuple[int, int]) -> dict[str, jax.Array]:
    """t_uniform [B] and mask_uniform [B, L] uniforms for the masked caption diffusion."""
    k1, k2 = jax.random.split(key)
    return {"t_uniform": jax.random.uniform(k1, ids_shape[:1], jnp.float32),
            "mask_uniform": jax.random.uniform(k2, ids_shape, jnp.float32)}


# ----------------------------------------------------------------------------------------------------------
# Branch losses.
# ----------------------------------------------------------------------------------------------------------
def _sigma(draws, cfg: LossConfig):
    u = jax.nn.sigmoid(cfg.logit_mean + cfg.logit_std * draws["sigma_normal"])
    sigma = flow.sigmas_from_uniform(u, cfg.shift)  # [B]
    return sigma, sigma * flow.NUM_TRAIN_TIMESTEPS


def image_branch(model_fn: ModelFn, x_in: jax.Array, x0: jax.Array, sigma: jax.Array,
                 timestep: jax.Array, txt: jax.Array) -> jax.Array:
    """Runs the image head on x_in and returns the per-example x0-space flow loss [B]."""
    velocity, _ = model_fn(x_in, txt, timestep, heads=("image",), text_logits_len=None)
    return losses.flow_x0_loss(velocity, x_in, x0, sigma)


def caption_branch(draws, model_fn: ModelFn, t5_fn: T5Fn, image: jax.Array | None, ids: jax.Array,
                   label_mask: jax.Array, cond_segments: tuple[jax.Array, ...], cfg: LossConfig,
                   kind: str = "mdlm") -> tuple[jax.Array, dict[str, jax.Array]]:
    """Masked caption diffusion at model timestep 0: text = [T5(x_t), *cond_segments]; per-example loss [B]."""
    b, length = ids.shape
    t = masked_text.t_from_uniform(draws["t_uniform"], sampling_eps=cfg.sampling_eps, antithetic=cfg.antithetic)
    x_t = masked_text.mask_from_uniform(draws["mask_uniform"], ids, label_mask, t, cfg.mask_id, cfg.mask_eps)
    txt = cond.concat_segments(_t5(t5_fn, x_t, None), *cond_segments)  # [B, L * (1 + n_cond), D]
    _, logits = model_fn(image, txt, jnp.zeros((b,), jnp.float32), heads=("text",), text_logits_len=length)
    logits = logits[:, :length]  # [B, L, V] (the caption segment only)
    if kind == "brier":
        per_ex = losses.brier_loss(logits, ids, label_mask, t, norm=cfg.text_loss_norm)
    else:
        per_ex = losses.mdlm_loss(logits, x_t, ids, label_mask, t, cfg.mask_id, eps=cfg.mask_eps,
                                  norm=cfg.text_loss_norm)
    n_label = jnp.maximum(jnp.sum(label_mask > 0), 1)
    metrics = {"t_mean": jnp.mean(t),
               "masked_frac": jnp.sum((x_t == cfg.mask_id) & (label_mask > 0)) / n_label}
    return per_ex, metrics


# ----------------------------------------------------------------------------------------------------------
# Stage 1: t2i image flow + i2t caption diffusion (spec §2.3).
# ----------------------------------------------------------------------------------------------------------
STAGE1_KEYS = (T2I_LATENTS, K.T2I_IDS, I2T_LATENTS, K.CAPTION_IDS, K.CAPTION_LABEL_MASK)


def draw_stage1(key: jax.Array, batch: Mapping[str, jax.Array]) -> dict[str, Any]:
    """All stage-1 randomness: {"image": draw_image(...), "text": draw_text(...), "real_caption": uniforms [B]}."""
    k1, k2 = jax.random.split(key)
    k3 = jax.random.fold_in(key, 3)  # a separate stream, so the image/text draws stay as they were
    b = batch[T2I_LATENTS].shape[0]
    return {"image": draw_image(k1, batch[T2I_LATENTS].shape), "text": draw_text(k2, batch[K.CAPTION_IDS].shape),
            "real_caption": jax.random.uniform(k3, (b,), jnp.float32)}


def stage1_loss_given(draws, batch, *, model_fn: ModelFn, t5_fn: T5Fn, null_emb: jax.Array,
                      cfg: LossConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Stage 1: flow loss on t2i latents with T5(t2i_ids) (10% -> null_emb) + caption loss given i2t latents."""
    model_fn, t5_fn = as_pure(model_fn), as_pure(t5_fn)
    _require(batch, STAGE1_KEYS, "stage-1")
    x0 = batch[T2I_LATENTS].astype(jnp.float32)
    _check_latents(x0, T2I_LATENTS)
    _check_latents(batch[I2T_LATENTS], I2T_LATENTS)
    d = draws["image"]
    sigma, timestep = _sigma(d, cfg)
    x_in = flow.add_noise(x0, d["noise"], sigma)  # [B, H, W, C]
    ids = batch[K.T2I_IDS]  # [B, L] re-captions
    if cfg.real_caption_ratio >= 0:  # the original's train_real_cap_ratio: some prompts are the structured caption
        _require(batch, (K.T2I_REAL_IDS,), f"stage-1 (real_caption_ratio={cfg.real_caption_ratio})")
        use_real = draws["real_caption"] < cfg.real_caption_ratio  # [B]
        ids = jnp.where(use_real[:, None], batch[K.T2I_REAL_IDS], ids)
    txt = _t5(t5_fn, ids, None)  # [B, L, D]
    txt, dropped = cond.drop_text(d["text_drop"], txt, null_emb, cfg.text_dropout)
    l_img = image_branch(model_fn, x_in, x0, sigma, timestep, txt)
    l_txt, tm = caption_branch(draws["text"], model_fn, t5_fn, batch[I2T_LATENTS].astype(jnp.float32),
                               batch[K.CAPTION_IDS], batch[K.CAPTION_LABEL_MASK], (), cfg)
    loss = jnp.mean(l_img) + cfg.caption_weight * jnp.mean(l_txt)
    return loss, {"loss_img": jnp.mean(l_img), "loss_txt": jnp.mean(l_txt), "sigma_mean": jnp.mean(sigma),
                  "text_drop_frac": jnp.mean(dropped.astype(jnp.float32)), **tm}


def stage1_loss(key, batch, **kw) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Stage-1 objective L_img + w L_txt; kwargs as `stage1_loss_given`."""
    _require(batch, STAGE1_KEYS, "stage-1")
    return stage1_loss_given(draw_stage1(key, batch), batch, **kw)


# ----------------------------------------------------------------------------------------------------------
# Stage 2: preference + incomplete outfit (spec §2.4).
# ----------------------------------------------------------------------------------------------------------
STAGE2_KEYS = (TARGET_LATENTS, CONTEXT_LATENTS, K.CAPTION_IDS, K.CAPTION_LABEL_MASK, K.PREF_IDS, K.PREF_MASK,
               K.SENTENCE_IDS, K.SENTENCE_MASK)


def draw_stage2(key: jax.Array, batch: Mapping[str, jax.Array]) -> dict[str, Any]:
    """All stage-2 randomness: image/text draws, context/preference dropout uniforms [B], MLP dropout key."""
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    b = batch[TARGET_LATENTS].shape[0]
    return {"image": draw_image(k1, batch[TARGET_LATENTS].shape), "text": draw_text(k2, batch[K.CAPTION_IDS].shape),
            "context_drop": jax.random.uniform(k3, (b,), jnp.float32),
            "pref_drop": jax.random.uniform(k4, (b,), jnp.float32), "dropout_key": k5}


def stage2_loss_given(draws, batch, *, model_fn: ModelFn, t5_fn: T5Fn,
                      offset_fn: Callable[[jax.Array, jax.Array], jax.Array],
                      target_role: jax.Array, null_emb: jax.Array, null_emb_2x: jax.Array,
                      cfg: LossConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Stage-2 objective. Preference dropout (static shapes, spec §7.2 item 8):

    - "per_sample" (default): each sample independently replaces its T5(pref) segment by the null segment
      null_emb, keeping the [pref, sentence] 2L layout; then 10% null replacement by null_emb_2x.
    - "per_batch" (original): one draw (the first row's) per micro-batch; when dropped, the text is
      T5(sentence) alone (L tokens, null replacement by null_emb). Both layouts are traced, `lax.cond`
      runs one of them.
    """
    model_fn, t5_fn = as_pure(model_fn), as_pure(t5_fn)
    _require(batch, STAGE2_KEYS, "stage-2")
    x0 = batch[TARGET_LATENTS].astype(jnp.float32)
    _check_latents(x0, TARGET_LATENTS)
    b = x0.shape[0]
    ctx = cond.context_mean(batch[CONTEXT_LATENTS])  # [B, H, W, C]
    c = offset_fn(ctx, draws["dropout_key"])  # MatchingMLP(ctx + r_c), train-mode dropout; outside any lax.cond
    keep = cond.context_keep(draws["context_drop"], cfg.context_dropout)  # [B]
    d = draws["image"]
    sigma, timestep = _sigma(d, cfg)
    x_in = cond.stage2_image_input(x0, d["noise"], sigma, target_role, c, keep, cfg.matching_lambda)
    pref = _t5(t5_fn, batch[K.PREF_IDS], batch[K.PREF_MASK])  # [B, L, D]
    sent = _t5(t5_fn, batch[K.SENTENCE_IDS], batch[K.SENTENCE_MASK])  # [B, L, D]

    if cfg.preference_dropout_mode == "per_sample":
        pref_in, pref_dropped = cond.drop_text(draws["pref_drop"], pref, null_emb, cfg.preference_dropout)
        txt, dropped = cond.drop_text(d["text_drop"], cond.concat_segments(pref_in, sent), null_emb_2x,
                                      cfg.text_dropout, name="null_emb_2x")
        l_img = image_branch(model_fn, x_in, x0, sigma, timestep, txt)
    else:
        drop_all = draws["pref_drop"][0] < cfg.preference_dropout
        pref_dropped = jnp.broadcast_to(drop_all, (b,))
        full, dropped = cond.drop_text(d["text_drop"], cond.concat_segments(pref, sent), null_emb_2x,
                                       cfg.text_dropout, name="null_emb_2x")
        short, _ = cond.drop_text(d["text_drop"], sent, null_emb, cfg.text_dropout)
        l_img = jax.lax.cond(drop_all,
                             lambda: image_branch(model_fn, x_in, x0, sigma, timestep, short),
                             lambda: image_branch(model_fn, x_in, x0, sigma, timestep, full))

    l_txt, tm = caption_branch(draws["text"], model_fn, t5_fn, ctx, batch[K.CAPTION_IDS],
                               batch[K.CAPTION_LABEL_MASK], (pref, sent), cfg)
    loss = jnp.mean(l_img) + cfg.caption_weight * jnp.mean(l_txt)
    return loss, {"loss_img": jnp.mean(l_img), "loss_txt": jnp.mean(l_txt), "sigma_mean": jnp.mean(sigma),
                  "text_drop_frac": jnp.mean(dropped.astype(jnp.float32)),
                  "pref_drop_frac": jnp.mean(pref_dropped.astype(jnp.float32)), "context_keep_frac": jnp.mean(keep),
                  **tm}


def stage2_loss(key, batch, **kw) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Stage-2 objective L_img + w L_txt; kwargs as `stage2_loss_given`."""
    _require(batch, STAGE2_KEYS, "stage-2")
    return stage2_loss_given(draw_stage2(key, batch), batch, **kw)


# ----------------------------------------------------------------------------------------------------------
# Stage 3: text only, null image tokens (spec §2.5).
# ----------------------------------------------------------------------------------------------------------
STAGE3_KEYS = (K.CAPTION_IDS, K.CAPTION_LABEL_MASK, K.PREF_IDS, K.PREF_MASK, K.SENTENCE_IDS, K.SENTENCE_MASK)


def _flatten_aug(batch) -> tuple[jax.Array, jax.Array, int]:
    ids, lm = batch[K.CAPTION_IDS], batch[K.CAPTION_LABEL_MASK]
    if ids.shape != lm.shape or ids.ndim not in (2, 3):
        raise ValueError(f"stage-3 batch: caption_ids {ids.shape} and caption_label_mask {lm.shape} must both "
                         "be [B, L] or [B, A, L]")
    reps = 1 if ids.ndim == 2 else ids.shape[1]
    return ids.reshape(-1, ids.shape[-1]), lm.reshape(-1, ids.shape[-1]), reps


def draw_stage3(key: jax.Array, batch: Mapping[str, jax.Array]) -> dict[str, Any]:
    """All stage-3 randomness: text draws over the B*A flattened caption rows."""
    ids, _, _ = _flatten_aug(batch)
    return {"text": draw_text(key, ids.shape)}


def stage3_loss_given(draws, batch, *, model_fn: ModelFn, t5_fn: T5Fn,
                      cfg: LossConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Stage-3 caption loss ("brier" original, or "mdlm"); A augmentations per row reuse that row's pref/sentence."""
    model_fn, t5_fn = as_pure(model_fn), as_pure(t5_fn)
    _require(batch, STAGE3_KEYS, "stage-3")
    ids, lm, reps = _flatten_aug(batch)  # [B*A, L]
    pref = jnp.repeat(_t5(t5_fn, batch[K.PREF_IDS], batch[K.PREF_MASK]), reps, axis=0)  # [B*A, L, D]
    sent = jnp.repeat(_t5(t5_fn, batch[K.SENTENCE_IDS], batch[K.SENTENCE_MASK]), reps, axis=0)
    l_txt, tm = caption_branch(draws["text"], model_fn, t5_fn, None, ids, lm, (pref, sent), cfg, kind=cfg.stage3_loss)
    loss = jnp.mean(l_txt)
    return loss, {"loss_txt": loss, **tm}


def stage3_loss(key, batch, **kw) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Stage-3 text-only objective; kwargs as `stage3_loss_given`."""
    _require(batch, STAGE3_KEYS, "stage-3")
    return stage3_loss_given(draw_stage3(key, batch), batch, **kw)
