"""Logical-axis -> mesh-axis rules: the ONE place that decides how names from `axes.py` land on the mesh.

Mesh axes are `(data, fsdp, tensor)`. Presets:
  "dp"      : every parameter replicated, batch over (data, fsdp)      (pure data parallel)
  "fsdp"    : EMBED (and the other model-width dims) sharded over fsdp (ZeRO-3 style)
  "fsdp_tp" : "fsdp" plus MLP/HEADS/VOCAB over tensor (Megatron-style tensor parallel on top)
The stacked LAYERS axis is always unsharded.
"""
from __future__ import annotations

from typing import Mapping

from dualfashion_jax.sharding import axes

MESH_AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")  # mesh axes the batch dimension of every input is split over

MeshAxes = str | tuple[str, ...] | None
Rules = Mapping[str, MeshAxes]

_ALWAYS: dict[str, MeshAxes] = {
    axes.LAYERS: None, axes.KV: None, axes.NORM: None, axes.REL_BUCKETS: None, axes.PATCH: None,
    axes.CONV_IN: None, axes.ACT_BATCH: BATCH, axes.ACT_BATCH_ALL: MESH_AXES, axes.ACT_LEN: None, axes.ACT_EMBED: None,
}
_DP: dict[str, MeshAxes] = {
    axes.EMBED: None, axes.MLP: None, axes.HEADS: None, axes.VOCAB: None, axes.MOD: None, axes.COND: None,
    axes.CONV_OUT: None, axes.LATENT: None, axes.ACT_HEADS: None, axes.ACT_MLP: None, axes.ACT_VOCAB: None,
}
_FSDP = {**_DP, axes.EMBED: "fsdp", axes.CONV_OUT: "fsdp", axes.LATENT: "fsdp", axes.COND: "fsdp"}
_FSDP_TP = {
    **_FSDP, axes.MLP: "tensor", axes.HEADS: "tensor", axes.VOCAB: "tensor", axes.MOD: "tensor",
    axes.ACT_HEADS: "tensor", axes.ACT_MLP: "tensor", axes.ACT_VOCAB: "tensor",
}
PRESETS: dict[str, dict[str, MeshAxes]] = {
    "dp": {**_ALWAYS, **_DP},
    "fsdp": {**_ALWAYS, **_FSDP},
    "fsdp_tp": {**_ALWAYS, **_FSDP_TP},
}
# Activation layout used when no rules are in context (`activations.use_rules`): batch over (data, fsdp),
# heads / MLP hidden / vocab over tensor. Axes of size 1 drop out, so it fits dp, fsdp and fsdp_tp meshes alike.
ACTIVATION_DEFAULT: dict[str, MeshAxes] = {k: v for k, v in PRESETS["fsdp_tp"].items() if k.startswith("act_")}


def get(name: str, overrides: Mapping[str, MeshAxes] | None = None) -> dict[str, MeshAxes]:
    """Returns the rule table of preset `name` (optionally with per-name overrides from the config)."""
    if name not in PRESETS:
        raise ValueError(f"config.sharding.rules: unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    rules = dict(PRESETS[name])
    for logical, mesh_axes in (overrides or {}).items():
        flat = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes or ())
        bad = [a for a in flat if a not in MESH_AXES]
        if bad:
            raise ValueError(f"config.sharding.overrides[{logical!r}]: mesh axes {bad} not in {MESH_AXES}")
        rules[logical] = mesh_axes
    return rules


def mesh_axes_for(logical: str | None, rules: Rules) -> tuple[str, ...]:
    """Mesh axes for one logical name as a tuple (empty = replicated); unknown names are an error."""
    if logical is None:
        return ()
    if logical not in rules:
        raise ValueError(f"logical axis {logical!r} has no sharding rule; known: {sorted(rules)}")
    m = rules[logical]
    return () if m is None else ((m,) if isinstance(m, str) else tuple(m))
