"""Drop-in comparison API: `DualFashionTransformer` takes/returns PyTorch layouts around a jitted `DualMMDiT`.

`model(hidden_states NCHW | None, encoder_hidden_states [B, L, 4096], timestep [B])` returns
`(velocity NCHW | null tokens [B, 8, D], logits [B, L, vocab])` like `SD3JointModelFlexible.forward`, so
scripts written against the PyTorch model can swap it in. `from_pretrained` reads a diffusers transformer
folder (converted on the fly) or a converted orbax checkpoint; neither needs torch.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dualfashion_jax.models import mmdit
from dualfashion_jax.models.mmdit_config import MMDiTConfig


@nnx.jit(static_argnames=("heads", "text_logits_len"))
def _forward(model: mmdit.DualMMDiT, x, txt, t, heads, text_logits_len):
    return model(x, txt, t, heads=heads, text_logits_len=text_logits_len)


@nnx.jit
def _offset(model: mmdit.DualMMDiT, ctx_mean):
    return model.stage2.offset(ctx_mean, deterministic=True)


class DualFashionTransformer:
    """PyTorch-convention wrapper over a `DualMMDiT` (`.model`); arrays may be numpy, JAX or torch-CPU tensors."""

    def __init__(self, model: mmdit.DualMMDiT):
        self.model = model
        self.config: MMDiTConfig = model.config

    def __call__(self, hidden_states, encoder_hidden_states, timestep, pooled_projections=None, *,
                 heads: Sequence[str] = mmdit.HEADS, text_logits_len: int | None = None):
        """hidden_states NCHW latents or None -> (velocity NCHW or trunk null tokens [B, 8, D], fp32 logits).

        `pooled_projections` is accepted for call-compatibility only; like the original it must be None.
        """
        if pooled_projections is not None:
            raise ValueError("pooled_projections must be None: DualFashion has no pooled-text conditioning "
                             "(temb depends on the timestep only, spec §1.1)")
        txt = _as_jax(encoder_hidden_states, "encoder_hidden_states")
        if txt.ndim != 3:
            raise ValueError(f"encoder_hidden_states must be [B, L, {self.config.joint_attention_dim}], got {tuple(txt.shape)}")
        t = _as_jax(timestep, "timestep").astype(jnp.float32)
        if t.ndim == 0:
            t = jnp.broadcast_to(t, (txt.shape[0],))
        x = None
        if hidden_states is not None:
            x = _as_jax(hidden_states, "hidden_states")
            if x.ndim != 4:
                raise ValueError(f"hidden_states must be NCHW [B, {self.config.in_channels}, H, W], got {tuple(x.shape)}")
            x = jnp.transpose(x, (0, 2, 3, 1))  # NCHW -> NHWC
        img, logits = _forward(self.model, x, txt, t, tuple(heads), text_logits_len)
        if img is not None and hidden_states is not None:
            img = jnp.transpose(img, (0, 3, 1, 2))  # NHWC -> NCHW
        return img, logits

    def stage2_offset(self, ctx_mean):
        """Stage-2 offset (eval mode) of the mean context latent, NCHW in and out."""
        if self.model.stage2 is None:
            raise ValueError("this transformer has no stage-2 modules (config.stage2 is False)")
        x = _as_jax(ctx_mean, "ctx_mean")
        if x.ndim != 4:
            raise ValueError(f"ctx_mean must be NCHW [B, {self.config.in_channels}, H, W], got {tuple(x.shape)}")
        return jnp.transpose(_offset(self.model, jnp.transpose(x, (0, 2, 3, 1))), (0, 3, 1, 2))

    @classmethod
    def from_pretrained(cls, path, *, stage2_variant: str | None = None, **overrides: Any) -> "DualFashionTransformer":
        """Loads a converted checkpoint (config.json kind "mmdit") or a diffusers transformer folder/file.

        `overrides` replace config fields, e.g. `dtype=jnp.bfloat16, attention_backend="auto"`.
        """
        from dualfashion_jax.conversion import mmdit as conv
        from dualfashion_jax.core import converted

        path = pathlib.Path(path)
        cfg_path = path / "config.json"
        meta = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        if "kind" in meta:
            if meta["kind"] != "mmdit":
                raise ValueError(f"{cfg_path}: holds a {meta['kind']!r} checkpoint, expected 'mmdit' (a transformer)")
            if stage2_variant is not None and meta["config"].get("stage2_variant") != stage2_variant:
                raise ValueError(f"{cfg_path}: converted with stage2_variant {meta['config'].get('stage2_variant')!r}; "
                                 f"re-convert from the source checkpoint with --stage2-variant {stage2_variant}")
            meta, flat = converted.load_converted(path, kind="mmdit")
            cfg = MMDiTConfig.from_dict(meta["config"], source=str(cfg_path))
        else:
            notes: list[str] = []
            cfg, flat = conv.load_source(path, stage2_variant=stage2_variant, notes=notes)
            for n in notes:
                print(f"[from_pretrained] {n}")
        if overrides:
            cfg = dataclasses.replace(cfg, **overrides)
        return cls(conv.model_from_flat(cfg, flat))


def _as_jax(x, name: str) -> jax.Array:
    """numpy / JAX / torch (CPU, detached) -> jax.Array, without importing torch."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor
        x = x.detach().cpu().float().numpy()
    try:
        return jnp.asarray(np.asarray(x) if not isinstance(x, jax.Array) else x)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: cannot convert {type(x).__name__} to an array ({e})") from e
