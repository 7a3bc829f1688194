"""Analytic model FLOPs of the DualMMDiT (train steps of stages 1-3, PFITB sampling) and the MFU helper.

Counting (jax_anchors.md §5.2; one multiply-add = 2 FLOPs; docs/performance.md has the derivation):
* every token passes through ITS stream's q/k/v/out + 4x MLP only: 12 L d^2 active params per token,
  forward 24 L d^2 per token (NOT 2 x total params: that double-counts the two streams' weights);
* joint attention over N = N_img + N_txt tokens: QK^T and AV, forward 4 L N^2 d;
* per-sample (not per-token) AdaLN modulation (2 streams x d -> 6d per block, d -> 2d at the head) and the
  timestep MLP; patch embed / image projection on image tokens; context embedder on text tokens; the text
  head only on the text tokens actually kept (`text_logits_len`);
* training = forward + backward; backward = 2 x forward (dX and dW), except layers whose input needs no
  gradient (patch embed, context embedder, timestep MLP input layer, matching MLP input layer): dW only, 1 x.
  Remat recompute is NOT counted (that is HFU, not MFU); frozen T5 FLOPs are reported separately.
Cross-check against a compiled step with `compiled_matmul_flops` (the optimized HLO's dots and convolutions,
while-loop trip counts applied): `compiled.cost_analysis()` counts a scanned trunk's body once, i.e. under-counts
it by the number of layers.
"""
from __future__ import annotations

from typing import Mapping

from dualfashion_jax.models.mmdit_config import MMDiTConfig
from dualfashion_jax.sharding import hlo_stats

# Dense bf16 peak FLOP/s per chip (jax_anchors.md §5.1; H100 SXM 989 is the dense, not the sparsity, figure).
PEAK_BF16: dict[str, float] = {"h100": 989e12, "h200": 989e12, "v5p": 459e12, "v6e": 918e12, "v7x": 2307e12}
INPUT_TERMS = ("patch_embed", "context_embed", "timestep_in", "matching_in")  # backward = dW only


def _add(*terms: Mapping[str, float], scale: float = 1.0) -> dict[str, float]:
    out: dict[str, float] = {}
    for t in terms:
        for k, v in t.items():
            if k != "total":
                out[k] = out.get(k, 0.0) + scale * v
    out["total"] = sum(out.values())
    return out


def forward_flops(cfg: MMDiTConfig, n_img: int, n_txt: int, *, image_head: bool, text_kept: int,
                  patch_input: bool = True) -> dict[str, float]:
    """Forward FLOPs of one sample by term. n_img image tokens (8 null tokens for text-only input with
    `patch_input=False`), n_txt text tokens, the image head on/off, the text head on `text_kept` tokens (0 = off)."""
    if n_img < 0 or n_txt < 1 or not 0 <= text_kept <= n_txt:
        raise ValueError(f"forward_flops: need n_img >= 0, n_txt >= 1, 0 <= text_kept <= n_txt; "
                         f"got {n_img}, {n_txt}, {text_kept}")
    L, d, p, c = cfg.num_layers, cfg.hidden_size, cfg.patch_size, cfg.in_channels
    n = n_img + n_txt
    t = {
        "trunk": 24.0 * L * d * d * n,                       # q,k,v,out (4 d^2) + MLP (8 d^2) per token
        "attention": 4.0 * L * n * n * d,                    # QK^T + AV over the joint sequence
        "adaln": 24.0 * L * d * d,                           # 2 streams x (d -> 6d) per block, per sample
        "timestep_in": 2.0 * cfg.timestep_features * d,      # timestep MLP layer 1
        "timestep": 2.0 * d * d,                             # timestep MLP layer 2
        "context_embed": 2.0 * cfg.joint_attention_dim * d * n_txt,
        "patch_embed": 2.0 * p * p * c * d * n_img if patch_input else 0.0,
        "image_head": (4.0 * d * d + 2.0 * d * p * p * cfg.out_channels * n_img) if image_head else 0.0,
        "text_head": 2.0 * d * cfg.vocab_size * text_kept,
    }
    t["total"] = sum(t.values())
    return t


def train_from_forward(fwd: Mapping[str, float]) -> dict[str, float]:
    """fwd + bwd: 3 x each term, 2 x for the input layers (their backward computes no dX)."""
    out = {k: v * (2.0 if k in INPUT_TERMS else 3.0) for k, v in fwd.items() if k != "total"}
    out["total"] = sum(out.values())
    return out


def matching_forward_flops(cfg: MMDiTConfig) -> dict[str, float]:
    """Stage-2 offset network (MatchingMLP C*H*W -> hidden -> C*H*W, gated 1x1 conv) per sample, forward."""
    h, w = cfg.latent_hw
    n = h * w * cfg.in_channels
    return {"matching_in": 2.0 * n * cfg.matching_hidden, "matching": 2.0 * cfg.matching_hidden * n
            + 2.0 * cfg.in_channels * cfg.in_channels * h * w}


def image_tokens(cfg: MMDiTConfig) -> int:
    h, w = cfg.latent_hw
    return (h // cfg.patch_size) * (w // cfg.patch_size)


def synthetic_step_flops(cfg: MMDiTConfig, txt_len: int, text_kept: int | None = None) -> dict[str, float]:
    """Per sample, the benchmark step (`bench_step`): one forward with both heads, fwd + bwd."""
    kept = txt_len if text_kept is None else text_kept
    return train_from_forward(forward_flops(cfg, image_tokens(cfg), txt_len, image_head=True, text_kept=kept))


def stage_train_flops(cfg: MMDiTConfig, stage: int, seg_len: int = 256, augmentations: int = 1) -> dict[str, float]:
    """Model FLOPs per training sample of stage 1/2/3 (diffusion/stages.py), fwd + bwd; T5 excluded.

    stage 1: t2i image branch (N_img + L text, image head) + i2t caption branch (N_img + L, text head on L);
    stage 2: image branch with [pref; sentence] (2L) + caption branch with [caption; pref; sentence] (3L,
             text head on L) + the matching MLP; stage 3: `augmentations` caption rows on 8 null tokens + 3L.
    """
    n_img, L = image_tokens(cfg), seg_len
    if stage == 1:
        parts = [forward_flops(cfg, n_img, L, image_head=True, text_kept=0),
                 forward_flops(cfg, n_img, L, image_head=False, text_kept=L)]
    elif stage == 2:
        parts = [forward_flops(cfg, n_img, 2 * L, image_head=True, text_kept=0),
                 forward_flops(cfg, n_img, 3 * L, image_head=False, text_kept=L), matching_forward_flops(cfg)]
    elif stage == 3:
        parts = [_add(forward_flops(cfg, cfg.num_null_tokens, 3 * L, image_head=False, text_kept=L,
                                    patch_input=False), scale=augmentations)]
    else:
        raise ValueError(f"stage_train_flops: stage must be 1, 2 or 3, got {stage!r}")
    return train_from_forward(_add(*parts))


def pfitb_sampling_flops(cfg: MMDiTConfig, num_steps: int = 28, branches: int = 4, seg_len: int = 256) -> dict[str, float]:
    """Forward FLOPs per generated PFITB image: steps x guidance branches x (N_img + 2L tokens, image head),
    plus one matching-MLP pass. T5 and the VAE decoder are excluded (see `t5_forward_flops`)."""
    one = forward_flops(cfg, image_tokens(cfg), 2 * seg_len, image_head=True, text_kept=0)
    return _add(_add(one, scale=num_steps * branches), matching_forward_flops(cfg))


def t5_forward_flops(t5_cfg, tokens: int) -> float:
    """Frozen T5 v1.1 encoder forward on one sequence of `tokens`: q/k/v/o + gated-GELU FF + attention."""
    d, inner, ff, n = t5_cfg.d_model, t5_cfg.inner_dim, t5_cfg.d_ff, tokens
    per_layer = 2.0 * n * (4 * d * inner + 3 * d * ff) + 4.0 * n * n * inner
    return t5_cfg.num_layers * per_layer


T5_SEGMENTS_PER_SAMPLE = {"stage1": 2, "stage2": 3, "stage3": 3, "pfitb": 3}  # T5 passes of L tokens


def compiled_matmul_flops(compiled) -> float:
    """Per-device matmul FLOPs of a compiled program, loop trip counts applied (sharding/hlo_stats.py)."""
    return hlo_stats.analyze_text(compiled.as_text()).matmul_flops


def mfu(step_flops: float, step_time: float, n_chips: int, peak: float | str) -> float:
    """Model FLOPs utilisation: step_flops / (step_time * n_chips * peak); `peak` in FLOP/s or a PEAK_BF16 key."""
    if isinstance(peak, str):
        if peak not in PEAK_BF16:
            raise ValueError(f"mfu: unknown chip {peak!r}; expected one of {sorted(PEAK_BF16)} or a FLOP/s number")
        peak = PEAK_BF16[peak]
    if step_time <= 0 or n_chips < 1 or peak <= 0:
        raise ValueError(f"mfu: need step_time > 0, n_chips >= 1, peak > 0; got {step_time}, {n_chips}, {peak}")
    return step_flops / (step_time * n_chips * peak)
