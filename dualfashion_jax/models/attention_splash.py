"""TPU `splash` attention backend: the Pallas splash kernel inside `jax.shard_map` over the mesh.

Batch is split over the mesh's batch axes (`data`, `fsdp`) and heads over `tensor`, so every device runs the
kernel on its local [B/dp, H/tp, L, Dh] shard (`head_shards = q_seq_shards = 1`: the shard_map did the split).
The joint sequence (e.g. 1024 image + 256 text tokens) is padded to a multiple of the block size; padded
positions get segment id 0 and real ones 1, so real queries never attend padding (padded rows are dropped).
Block sizes come from `CHIP_BLOCKS` by `device_kind` (override with `blocks=`). The kernel is injectable
(`kernel_factory=`) so the padding / segment-id / shard_map logic is tested on CPU against the XLA reference.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from dualfashion_jax.sharding import rules as rules_lib

log = logging.getLogger(__name__)
RESIDUAL_NAME = "attn_out"  # checkpoint name of the kernel's residuals (see models/mmdit_block.py)
LANE = 128  # TPU lane width: block sizes (and so the padded length) are multiples of it
_WARNED: set[str] = set()

# kernel(q [H, Lp, Dh], k, v, seg [Lp] int32) -> [H, Lp, Dh]; q is pre-scaled.
Kernel = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]
KernelFactory = Callable[[int, int, "SplashBlocks", bool], Kernel]  # (local heads, Lp, blocks, interpret)


@dataclasses.dataclass(frozen=True)
class SplashBlocks:
    """Splash tile sizes (forward q/kv, dkv and dq backward); all multiples of 128."""

    block_q: int = 512
    block_kv: int = 512
    block_kv_compute: int = 512
    block_q_dkv: int = 512
    block_kv_dkv: int = 512
    block_kv_dkv_compute: int = 512
    block_q_dq: int = 512
    block_kv_dq: int = 512

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int) or v <= 0 or v % LANE:
                raise ValueError(f"SplashBlocks.{f.name} must be a positive multiple of {LANE}, got {v!r}")

    @property
    def granule(self) -> int:
        """The padded sequence length must be a multiple of every block size."""
        return math.lcm(*(getattr(self, f.name) for f in dataclasses.fields(self)))

    def fit(self, seq_len: int) -> tuple["SplashBlocks", int]:
        """(blocks clamped to the 128-padded length, padded length) for a sequence of `seq_len` tokens."""
        short = -(-seq_len // LANE) * LANE
        clamped = SplashBlocks(**{f.name: min(getattr(self, f.name), short) for f in dataclasses.fields(self)})
        g = clamped.granule
        return clamped, -(-seq_len // g) * g


# Starting points per chip (MaxDiffusion's practice: bigger blocks where VMEM is larger, v6e); NOT yet tuned
# on hardware -- grid-search them on the chip (docs/performance.md). Keys are prefixes of `device_kind`.
CHIP_BLOCKS: dict[str, SplashBlocks] = {
    "default": SplashBlocks(),
    "TPU v5": SplashBlocks(),  # v5p / v5e ("TPU v5", "TPU v5 lite")
    "TPU v6": SplashBlocks(1024, 1024, 512, 1024, 1024, 512, 1024, 1024),  # v6e (Trillium)
    "TPU7x": SplashBlocks(1024, 1024, 512, 1024, 1024, 512, 1024, 1024),
}


def blocks_for_chip(device_kind: str | None = None) -> SplashBlocks:
    """Block sizes for `device_kind` (default: the first device's), longest matching prefix in CHIP_BLOCKS."""
    kind = jax.devices()[0].device_kind if device_kind is None else device_kind
    match = [k for k in CHIP_BLOCKS if k != "default" and kind.startswith(k)]
    return CHIP_BLOCKS[max(match, key=len)] if match else CHIP_BLOCKS["default"]


def pallas_kernel_factory(num_heads: int, seq_len: int, blocks: SplashBlocks, interpret: bool) -> Kernel:
    """The real splash kernel (full bidirectional mask, padding masked by segment ids) for one shard."""
    # local: TPU-only Pallas kernels, imported only when the splash backend is built
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    mask = sm.MultiHeadMask([sm.FullMask((seq_len, seq_len)) for _ in range(num_heads)])
    # The kernel's residuals (out, logsumexp) carry the block's "attn_out" name, so the named remat policies
    # (models/remat.py) keep them instead of re-running the kernel's forward in the backward pass.
    kernel = sk.make_splash_mha(mask, block_sizes=sk.BlockSizes(**dataclasses.asdict(blocks)),
                                head_shards=1, q_seq_shards=1, interpret=interpret,
                                residual_checkpoint_name=RESIDUAL_NAME)

    def run(q, k, v, seg):
        return kernel(q, k, v, segment_ids=sk.SegmentIds(seg, seg))
    return run


def reference_kernel_factory(num_heads: int, seq_len: int, blocks: SplashBlocks, interpret: bool) -> Kernel:
    """Same contract as the splash kernel, in plain XLA (fp32 softmax): the CPU stand-in for tests."""
    del num_heads, seq_len, blocks, interpret

    def run(q, k, v, seg):
        logits = jnp.einsum("hqd,hkd->hqk", q, k, preferred_element_type=jnp.float32)  # [H, Lp, Lp]
        logits = jnp.where(seg[:, None] == seg[None, :], logits, -1e30)
        return jnp.einsum("hqk,hkd->hqd", jax.nn.softmax(logits, -1).astype(v.dtype), v)
    return run


def _context_mesh() -> Mesh | None:
    m = jax.sharding.get_abstract_mesh()
    return None if m.empty else m


def _axes_dividing(mesh, names: tuple[str, ...], dim: int) -> tuple[str, ...]:
    """The subset of mesh axes `names` (in order) whose running product divides `dim`."""
    keep: list[str] = []
    for a in names:
        if a in mesh.shape and mesh.shape[a] > 1 and dim % (math.prod(mesh.shape[b] for b in keep) * mesh.shape[a]) == 0:
            keep.append(a)
    return tuple(keep)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float, mesh: Mesh | None = None,
                     blocks: SplashBlocks | None = None, kernel_factory: KernelFactory | None = None,
                     interpret: bool = False) -> jax.Array:
    """Splash attention of q/k/v `[B, L, H, Dh]` -> `[B, L, H, Dh]`, sharded over `mesh` (default: the context mesh).

    On TPU, run the model under `jax.set_mesh(mesh)` so the kernel runs per shard; without a mesh the kernel
    sees the global arrays (correct, but XLA gathers them onto every device: a warning is logged).
    """
    b, length, h, dh = q.shape
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"splash attention: self-attention needs q, k, v of one shape [B, L, H, Dh]; got "
                         f"q {q.shape}, k {k.shape}, v {v.shape}")
    blocks, lp = (blocks or blocks_for_chip()).fit(length)
    factory = kernel_factory or pallas_kernel_factory
    mesh = mesh if mesh is not None else _context_mesh()

    def prep(x):  # [B, L, H, Dh] -> [B, H, Lp, Dh]
        return jnp.pad(x.transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, lp - length), (0, 0)))

    q = q * jnp.asarray(scale, q.dtype)  # the kernel applies no softmax scale

    batch_axes = _axes_dividing(mesh, rules_lib.BATCH, b) if mesh is not None else ()
    head_axes = _axes_dividing(mesh, ("tensor",), h) if mesh is not None else ()
    local_heads = h // math.prod(mesh.shape[a] for a in head_axes) if head_axes else h
    kernel = factory(local_heads, lp, blocks, interpret)

    def local(q_, k_, v_):  # [b, h, Lp, Dh] local shards
        seg = (jnp.arange(lp) < length).astype(jnp.int32)  # [Lp]: 1 real, 0 padding
        return jax.vmap(kernel, in_axes=(0, 0, 0, None))(q_, k_, v_, seg)

    args = (prep(q), prep(k), prep(v))
    if mesh is None or mesh.size == 1:
        if mesh is None and jax.device_count() > 1 and "nomesh" not in _WARNED:
            _WARNED.add("nomesh")
            log.warning("splash attention: no mesh given or set (jax.set_mesh); the kernel runs on unsharded "
                        "arrays across %d devices", jax.device_count())
        out = local(*args)
    else:
        spec = P(batch_axes or None, head_axes or None, None, None)
        out = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(*args)
    return out[:, :, :length].transpose(0, 2, 1, 3)  # [B, L, H, Dh]
