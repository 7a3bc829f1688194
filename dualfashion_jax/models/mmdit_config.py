"""`MMDiTConfig`: every hyper-parameter of the dual MMDiT (spec §1.1/§1.2) plus named presets.

Frozen so a config can be a static jit argument; `to_dict`/`from_dict` give the JSON form stored next to
converted checkpoints (dtypes as names, the latent size as a list).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

from dualfashion_jax.models import config_io

STAGE2_VARIANTS = ("mlp", "gor_projector")
PREDICTIONS = ("velocity", "sample")  # what the image head's linear output is (see `MMDiTConfig.prediction`)
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims", "save_attn_out", "save_named",
                  "offload_named")  # models/remat.py RematPolicy


@dataclasses.dataclass(frozen=True)
class MMDiTConfig:
    """Joint image/text MMDiT hyper-parameters; D = num_heads * head_dim."""

    num_layers: int = 2
    num_heads: int = 2
    head_dim: int = 16
    in_channels: int = 16
    out_channels: int = 16
    patch_size: int = 2
    sample_size: int = 8                 # latent side the pos-embed base grid is defined for
    pos_embed_max_size: int = 16         # side of the stored sincos grid (in patches)
    joint_attention_dim: int = 32        # T5 width fed to the context embedder
    vocab_size: int = 64                 # text head size (T5 vocab: 32100)
    num_null_tokens: int = 8             # learned image tokens used for text-only input
    latent_size: int | tuple[int, int] = 8  # latent H(,W) the stage-2 matching MLP is built for
    stage2: bool = True                  # build the stage-2 modules (role embeddings + offset net)
    stage2_variant: str = "mlp"          # "mlp" (training script) | "gor_projector" (GOR inference)
    matching_hidden: int = 1024          # MatchingMLP hidden width
    matching_dropout: float = 0.1
    timestep_features: int = 256         # sinusoidal features of t before the timestep MLP
    interpolation_scale: float = 1.0     # diffusers PatchEmbed interpolation scale
    dtype: Any = jnp.float32             # compute dtype (bf16 for speed); params stay param_dtype
    param_dtype: Any = jnp.float32
    attention_backend: str = "xla"       # see models/attention.py
    remat_policy: str = "none"           # see models/remat.py
    scan_layers: bool = True             # False: unroll the layer loop (params stay stacked either way)
    # "velocity": the head predicts F (SD3, the original); "sample": it predicts the clean latent x0 and the
    # model returns the velocity it implies, (x_in - x0) / sigma (x-prediction, Li & He 2025; the demo's choice)
    prediction: str = "velocity"

    def __post_init__(self):
        if isinstance(self.latent_size, (list, tuple)):  # JSON gives [H, W]
            object.__setattr__(self, "latent_size", tuple(int(x) for x in self.latent_size))
        positive = ("num_layers", "num_heads", "head_dim", "in_channels", "out_channels", "patch_size",
                    "sample_size", "pos_embed_max_size", "joint_attention_dim", "vocab_size",
                    "num_null_tokens", "matching_hidden", "timestep_features")
        for name in positive:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"MMDiTConfig.{name} must be a positive int, got {v!r}")
        if self.stage2_variant not in STAGE2_VARIANTS:
            raise ValueError(f"MMDiTConfig.stage2_variant must be one of {STAGE2_VARIANTS}, got {self.stage2_variant!r}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"MMDiTConfig.remat_policy must be one of {REMAT_POLICIES}, got {self.remat_policy!r}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"MMDiTConfig.prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        if self.sample_size % self.patch_size:
            raise ValueError(f"MMDiTConfig.sample_size {self.sample_size} is not a multiple of patch_size {self.patch_size}")
        if self.hidden_size % 4:
            raise ValueError(f"MMDiTConfig: hidden size {self.hidden_size} must be divisible by 4 (2D sincos pos-embed)")
        if self.timestep_features % 2:
            raise ValueError(f"MMDiTConfig.timestep_features must be even, got {self.timestep_features}")
        h, w = self.latent_hw
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"MMDiTConfig.latent_size {self.latent_size} is not a multiple of patch_size {self.patch_size}")
        if not 0.0 <= self.matching_dropout < 1.0:
            raise ValueError(f"MMDiTConfig.matching_dropout must be in [0, 1), got {self.matching_dropout}")
        for name in ("dtype", "param_dtype"):  # normalise "bfloat16" / jnp.bfloat16 -> np.dtype
            try:
                object.__setattr__(self, name, jnp.dtype(getattr(self, name)))
            except TypeError as e:
                raise ValueError(f"MMDiTConfig.{name}: not a dtype: {getattr(self, name)!r}") from e

    @property
    def hidden_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def latent_hw(self) -> tuple[int, int]:
        """(H, W) of the latent the stage-2 modules are built for."""
        s = self.latent_size
        if isinstance(s, int):
            return (s, s)
        if len(s) != 2:
            raise ValueError(f"MMDiTConfig.latent_size must be an int or (H, W), got {s!r}")
        return (int(s[0]), int(s[1]))

    @property
    def patch_dim(self) -> int:
        """Values per output patch: p * p * out_channels."""
        return self.patch_size * self.patch_size * self.out_channels

    @property
    def compute_dtype(self):
        return self.dtype

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (dtypes by name, latent size as int or [H, W])."""
        return config_io.to_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "config") -> "MMDiTConfig":
        """Inverse of `to_dict`; unknown keys are an error naming `source`."""
        return config_io.from_dict(cls, d, source=source)


PRESETS: dict[str, MMDiTConfig] = {
    # Unit tests: everything tiny, stage-2 MLP on an 8x8 latent.
    "tiny": MMDiTConfig(num_layers=2, num_heads=2, head_dim=16, patch_size=2, sample_size=8,
                        pos_embed_max_size=16, joint_attention_dim=32, vocab_size=64, latent_size=8,
                        matching_hidden=32),
    # CPU demo / benchmark size: 32x32 latents (256 px), a 256-wide text encoder.
    "small": MMDiTConfig(num_layers=4, num_heads=4, head_dim=32, patch_size=2, sample_size=32,
                         pos_embed_max_size=48, joint_attention_dim=256, vocab_size=32100, latent_size=32,
                         matching_hidden=256),
    # DualFashion as released: SD3-medium trunk, T5-XXL context, 512 px (64x64x16 latents).
    "sd3_medium": MMDiTConfig(num_layers=24, num_heads=24, head_dim=64, patch_size=2, in_channels=16,
                              out_channels=16, sample_size=128, pos_embed_max_size=192,
                              joint_attention_dim=4096, vocab_size=32100, latent_size=64,
                              matching_hidden=1024),
}


def get(name: str, **overrides: Any) -> MMDiTConfig:
    """Preset `name` ("tiny", "small", "sd3_medium"), with optional field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown MMDiT preset {name!r}; expected one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides) if overrides else PRESETS[name]
