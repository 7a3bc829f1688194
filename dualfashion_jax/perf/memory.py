"""Train-step memory: XLA's `compiled.memory_analysis()` per config, an analytic model, and the largest batch.

Persistent (per device, not per sample): fp32 params + fp32 grads + AdamW mu/nu + fp32 EMA = 20 B/param
(+ a frozen bf16 T5-XXL, 2 B/param, when T5 runs inside the step). Per sample: the activations each remat
policy keeps for the backward pass (`activation_bytes_per_sample`), plus one block's recompute working set
when remat is on. `largest_batch` solves capacity >= fixed + B * per_sample. docs/performance.md has the table.
"""
from __future__ import annotations

import dataclasses
import math

import jax
from flax import nnx

from dualfashion_jax.models import mmdit
from dualfashion_jax.models.mmdit_config import MMDiTConfig

GB = 1e9
TRAIN_STATE_BYTES_PER_PARAM = 4 + 4 + 8 + 4  # param, grad, AdamW (mu, nu), EMA; all fp32


@dataclasses.dataclass(frozen=True)
class MemoryStats:
    """Per-device bytes from `compiled.memory_analysis()`; `peak` counts donated (aliased) buffers once."""

    argument: int
    output: int
    alias: int
    temp: int
    generated_code: int

    @classmethod
    def from_compiled(cls, compiled) -> "MemoryStats":
        m = compiled.memory_analysis()
        if m is None:
            raise ValueError("memory_analysis() returned None: this backend does not report buffer sizes")
        return cls(int(m.argument_size_in_bytes), int(m.output_size_in_bytes), int(m.alias_size_in_bytes),
                   int(m.temp_size_in_bytes), int(m.generated_code_size_in_bytes))

    @property
    def peak(self) -> int:
        return self.argument + self.output - self.alias + self.temp


def param_count(cfg: MMDiTConfig) -> int:
    """Trainable parameters of `DualMMDiT(cfg)` (eval_shape: nothing allocated)."""
    abstract = nnx.eval_shape(lambda: mmdit.DualMMDiT(cfg, rngs=nnx.Rngs(0)))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def t5_param_count(t5_cfg) -> int:
    """T5 encoder parameters (embedding, per-layer attention + gated FF + norms, relative bias, final norm)."""
    d, inner, ff = t5_cfg.d_model, t5_cfg.inner_dim, t5_cfg.d_ff
    per_layer = 4 * d * inner + 3 * d * ff + 2 * d
    return t5_cfg.vocab_size * d + t5_cfg.num_layers * per_layer + t5_cfg.relative_attention_num_buckets * t5_cfg.num_heads + d


def fixed_bytes(n_params: int, *, t5_params: int = 0, shards: int = 1) -> float:
    """Per-device persistent bytes: the fp32 train state (/ shards under FSDP) + a replicated bf16 T5."""
    return TRAIN_STATE_BYTES_PER_PARAM * n_params / shards + 2 * t5_params


# Activation tensors kept per block per token, in units of d (compute dtype), by remat policy (see docs):
#   none: x, LN/modulated x, q, k, v, attn_out, out-proj, residual, LN2/modulated, MLP in (4d), GELU (4d) = 16 d
#   dots_saveable: all matmul outputs q,k,v,out,MLP in,MLP out (9 d) + block input (1 d) + AV output (1 d)
#   dots_with_no_batch_dims: weight matmuls only (9 d) + block input;  save_named: qkv (3 d) + attn_out + input
#   save_attn_out: attn_out + input;  full / offload_named: the block input only (offload keeps 4 d on the host)
SAVED_D = {"none": 16, "dots_saveable": 11, "dots_with_no_batch_dims": 10, "save_named": 5, "save_attn_out": 2,
           "full": 1, "offload_named": 1}


def activation_bytes_per_sample(cfg: MMDiTConfig, n_img: int, n_txt: int, text_kept: int, policy: str, *,
                                flash: bool, dtype_bytes: int | None = None) -> float:
    """Analytic per-sample activation bytes of the train step under `policy`.

    Non-flash (XLA) attention also keeps the fp32 logits and the probabilities [H, N, N] per block when they are
    saved (none, dots_saveable), and always in the one block being recomputed; the backward of one block needs
    about one block's activations again as working set; the text head keeps fp32 logits, log-softmax and
    their gradient [text_kept, V]. On CPU XLA this is within ~0.7-1.5x of memory_analysis (tests/test_memory.py).
    """
    if policy not in SAVED_D:
        raise ValueError(f"activation_bytes_per_sample: unknown remat policy {policy!r}; expected one of {sorted(SAVED_D)}")
    b = dtype_bytes or cfg.dtype.itemsize
    L, d, h = cfg.num_layers, cfg.hidden_size, cfg.num_heads
    n = n_img + n_txt
    scores = 0.0 if flash else h * n * n * (4 + b)  # fp32 logits + probs in compute dtype
    block_none = SAVED_D["none"] * n * d * b + scores
    work = block_none  # the backward working set of one block (activation grads, score grads)
    if policy == "none":
        trunk = L * block_none + work
    else:
        kept_scores = scores if policy == "dots_saveable" else 0.0
        trunk = L * (SAVED_D[policy] * n * d * b + kept_scores) + block_none + work  # + one block recomputed
    head = 12.0 * text_kept * cfg.vocab_size
    return trunk + head


def largest_batch(capacity_bytes: float, fixed: float, per_sample: float) -> int:
    """Largest B with fixed + B * per_sample <= capacity (0 if even B = 1 does not fit)."""
    if per_sample <= 0:
        raise ValueError(f"largest_batch: per_sample must be > 0, got {per_sample}")
    return max(0, int((capacity_bytes - fixed) // per_sample))


def measured_per_sample(stats_small: MemoryStats, stats_large: MemoryStats, b_small: int, b_large: int) -> tuple[float, float]:
    """(fixed, per-sample) peak bytes from two compiles of the same step at batches b_small < b_large."""
    if b_large <= b_small:
        raise ValueError(f"measured_per_sample: need b_small < b_large, got {b_small}, {b_large}")
    slope = (stats_large.peak - stats_small.peak) / (b_large - b_small)
    return stats_small.peak - b_small * slope, slope
