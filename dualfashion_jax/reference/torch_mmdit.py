"""PyTorch reference of DualFashion's transformer: `SD3JointModelFlexible` on diffusers 0.42 + stage-2 modules.

Rebuilt from the spec (§1.1, §1.2) by subclassing diffusers' `SD3Transformer2DModel` with DualFashion's
changes: timestep-only conditioning (`TimestepProjEmbeddings`, keeping the `time_text_embed.timestep_embedder`
names), the last block rebuilt with `context_pre_only=False`, 8 learned null image tokens, separate image
(`image_norm_out`/`image_proj_out`) and text (`text_norm_out`/`text_proj_out`) heads. The stage-2 modules
are optional constructor arguments here (the original attaches them by hand) with the original names:
`stage2_target_role_embedding`, `stage2_context_role_embedding`, `stage2_matching_mlp.{hidden,output}_layer`
or GOR's `stage2_context_projector` + `stage2_context_gate`. Used by parity tests and benchmarks.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention import JointTransformerBlock
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.normalization import AdaLayerNormContinuous
from diffusers.models.transformers import SD3Transformer2DModel


class TimestepProjEmbeddings(nn.Module):
    """temb = MLP(sinusoid_256(t)): SD3's `CombinedTimestepTextProjEmbeddings` without the pooled-text branch."""

    def __init__(self, embedding_dim: int):
        super().__init__()
        self.time_proj = Timesteps(num_channels=256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.timestep_embedder = TimestepEmbedding(in_channels=256, time_embed_dim=embedding_dim)

    def forward(self, timestep: torch.Tensor) -> torch.Tensor:
        return self.timestep_embedder(self.time_proj(timestep).to(self.timestep_embedder.linear_1.weight.dtype))


class MatchingMLP(nn.Module):
    """Stage-2 MLP: flatten (C,H,W) -> Linear -> LeakyReLU(0.01) -> Dropout -> Linear -> tanh -> reshape.

    The original builds its layers lazily from the first input; here the size is explicit (same init).
    """

    def __init__(self, input_dim: int, hidden_dim: int = 1024, dropout_p: float = 0.1):
        super().__init__()
        self.flatten = nn.Flatten()
        self.hidden_layer = nn.Linear(input_dim, hidden_dim)
        self.output_layer = nn.Linear(hidden_dim, input_dim)
        self.activation = nn.LeakyReLU()
        self.dropout = nn.Dropout(dropout_p)
        for layer in (self.hidden_layer, self.output_layer):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.dropout(self.activation(self.hidden_layer(self.flatten(x))))
        return torch.tanh(self.output_layer(hidden)).view_as(x)


class SD3JointModelFlexible(SD3Transformer2DModel):
    """DualFashion's joint MMDiT: forward(latents NCHW | None, T5 states, t) -> (velocity | null tokens, logits)."""

    @register_to_config
    def __init__(
        self,
        vocab_size: int = 32100,
        sample_size: int = 128,
        patch_size: int = 2,
        in_channels: int = 16,
        num_layers: int = 18,
        attention_head_dim: int = 64,
        num_attention_heads: int = 18,
        joint_attention_dim: int = 4096,
        caption_projection_dim: int = 1152,
        pooled_projection_dim: int = 2048,
        out_channels: int = 16,
        pos_embed_max_size: int = 96,
        num_null_tokens: int = 8,
        stage2_variant: str | None = None,          # None | "mlp" | "gor_projector"
        stage2_latent_size: Sequence[int] | int = 64,  # latent (H, W) of the stage-2 MLP
        stage2_matching_hidden: int = 1024,
        stage2_dropout: float = 0.1,
    ):
        super().__init__(
            sample_size=sample_size, patch_size=patch_size, in_channels=in_channels, num_layers=num_layers,
            attention_head_dim=attention_head_dim, num_attention_heads=num_attention_heads,
            joint_attention_dim=joint_attention_dim, caption_projection_dim=caption_projection_dim,
            pooled_projection_dim=pooled_projection_dim, out_channels=out_channels,
            pos_embed_max_size=pos_embed_max_size)
        d = self.inner_dim
        # Change 1: the last block keeps a full text update (SD3's is context_pre_only).
        self.transformer_blocks[-1] = JointTransformerBlock(
            dim=d, num_attention_heads=num_attention_heads, attention_head_dim=attention_head_dim,
            context_pre_only=False)
        # Change 2: no pooled-text conditioning.
        self.time_text_embed = TimestepProjEmbeddings(embedding_dim=d)
        # Change 3/4: separate heads, null image tokens.
        self.norm_out = None
        self.proj_out = None
        self.image_norm_out = AdaLayerNormContinuous(d, d, elementwise_affine=False, eps=1e-6)
        self.image_proj_out = nn.Linear(d, patch_size * patch_size * self.out_channels, bias=True)
        self.text_norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.text_proj_out = nn.Linear(d, vocab_size, bias=True)
        self.null_image_embd = nn.Parameter(torch.randn(1, num_null_tokens, d) / d ** 0.5)
        if stage2_variant is not None:
            self._build_stage2(stage2_variant, stage2_latent_size, stage2_matching_hidden, stage2_dropout)

    def _build_stage2(self, variant: str, latent_size, hidden: int, dropout: float) -> None:
        c = self.config.in_channels
        self.stage2_target_role_embedding = nn.Parameter(torch.randn(1, c, 1, 1) * 0.01)
        self.stage2_context_role_embedding = nn.Parameter(torch.randn(1, c, 1, 1) * 0.01)
        if variant == "mlp":
            h, w = (latent_size, latent_size) if isinstance(latent_size, int) else tuple(latent_size)
            self.stage2_matching_mlp = MatchingMLP(c * h * w, hidden, dropout)
        elif variant == "gor_projector":
            self.stage2_context_projector = nn.Conv2d(c, c, kernel_size=1)
            nn.init.zeros_(self.stage2_context_projector.weight)
            nn.init.zeros_(self.stage2_context_projector.bias)
            self.stage2_context_gate = nn.Parameter(torch.tensor(0.0))
        else:
            raise ValueError(f"stage2_variant must be None, 'mlp' or 'gor_projector', got {variant!r}")

    def stage2_offset(self, ctx_mean: torch.Tensor) -> torch.Tensor:
        """Offset from the mean context latent (NCHW): MLP(ctx + r_c), or GOR's r_t + sigmoid(g) * conv(ctx + r_c)."""
        x = ctx_mean + self.stage2_context_role_embedding
        if self.config.stage2_variant == "mlp":
            return self.stage2_matching_mlp(x)
        if self.config.stage2_variant == "gor_projector":
            gate = torch.sigmoid(self.stage2_context_gate)
            return self.stage2_target_role_embedding + gate * self.stage2_context_projector(x)
        raise ValueError("this model was built without stage-2 modules (stage2_variant=None)")

    def forward(self, hidden_states: torch.Tensor | None, encoder_hidden_states: torch.Tensor,
                timestep: torch.Tensor, pooled_projections: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden_states NCHW latents or None (text-only) -> (velocity NCHW or trunk null tokens [B, 8, D], logits)."""
        text_only = hidden_states is None
        if text_only:
            hidden_states = self.null_image_embd.repeat(encoder_hidden_states.shape[0], 1, 1)
        else:
            height, width = hidden_states.shape[-2:]
            hidden_states = self.pos_embed(hidden_states)
        temb = self.time_text_embed(timestep)
        encoder_hidden_states = self.context_embedder(encoder_hidden_states)
        for block in self.transformer_blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                encoder_hidden_states, hidden_states = self._gradient_checkpointing_func(
                    block, hidden_states, encoder_hidden_states, temb)
            else:
                encoder_hidden_states, hidden_states = block(
                    hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states, temb=temb)
        if not text_only:
            p, c = self.config.patch_size, self.out_channels
            h, w = height // p, width // p
            x = self.image_proj_out(self.image_norm_out(hidden_states, temb))
            x = torch.einsum("nhwpqc->nchpwq", x.reshape(x.shape[0], h, w, p, p, c))
            hidden_states = x.reshape(x.shape[0], c, h * p, w * p)
        logits = self.text_proj_out(self.text_norm_out(encoder_hidden_states))
        return hidden_states, logits


def reference_kwargs(cfg, *, stage2: bool | None = None) -> dict[str, Any]:
    """Constructor kwargs of `SD3JointModelFlexible` matching a Flax `MMDiTConfig` (stage-2 per cfg unless given)."""
    use_stage2 = cfg.stage2 if stage2 is None else stage2
    return dict(
        vocab_size=cfg.vocab_size, sample_size=cfg.sample_size, patch_size=cfg.patch_size,
        in_channels=cfg.in_channels, num_layers=cfg.num_layers, attention_head_dim=cfg.head_dim,
        num_attention_heads=cfg.num_heads, joint_attention_dim=cfg.joint_attention_dim,
        caption_projection_dim=cfg.hidden_size, out_channels=cfg.out_channels,
        pos_embed_max_size=cfg.pos_embed_max_size, num_null_tokens=cfg.num_null_tokens,
        stage2_variant=cfg.stage2_variant if use_stage2 else None, stage2_latent_size=list(cfg.latent_hw),
        stage2_matching_hidden=cfg.matching_hidden, stage2_dropout=cfg.matching_dropout)


def build_reference(cfg, *, stage2: bool | None = None, seed: int = 0) -> SD3JointModelFlexible:
    """A randomly initialised reference model for a Flax `MMDiTConfig` (eval mode)."""
    torch.manual_seed(seed)
    return SD3JointModelFlexible(**reference_kwargs(cfg, stage2=stage2)).eval()
