"""Gradient-checkpointing policies for the scanned MMDiT block (a small enum -> `jax.checkpoint_policies`).

The block tags `qkv_img`, `qkv_txt`, `attn_out` and `mlp_hidden` with `checkpoint_name`; the policy
decides what the backward pass may keep instead of recomputing. Applied with `nnx.remat` per block.
`offload_named` moves the named tensors to `pinned_host` memory where the device has it (else it saves
them on device like `save_named`, with a logged warning).
"""
from __future__ import annotations

import enum
import logging
from typing import Callable

import jax
from flax import nnx

log = logging.getLogger(__name__)
# The tensors the named policies keep (tagged in models/mmdit_block.py).
SAVED_NAMES = ("qkv_img", "qkv_txt", "attn_out")
OFFLOAD_SRC, OFFLOAD_DST = "device", "pinned_host"


class RematPolicy(str, enum.Enum):
    """What to save in the forward pass of each block (everything else is recomputed)."""

    NONE = "none"                                        # no remat: save everything (fastest, most memory)
    FULL = "full"                                        # save nothing but the block inputs
    DOTS_SAVEABLE = "dots_saveable"                      # save all matmul outputs
    DOTS_WITH_NO_BATCH_DIMS = "dots_with_no_batch_dims"  # save matmuls without batch dims (weights x acts)
    SAVE_ATTN_OUT = "save_attn_out"                      # save only the attention output (recompute FF, qkv)
    SAVE_NAMED = "save_named"                            # save only qkv_img, qkv_txt, attn_out
    OFFLOAD_NAMED = "offload_named"                      # offload those three to pinned host memory


def host_offload_supported() -> bool:
    """Whether the default device exposes a `pinned_host` memory space (TPU, GPU, recent CPU runtimes)."""
    try:
        return OFFLOAD_DST in {m.kind for m in jax.devices()[0].addressable_memories()}
    except Exception:  # noqa: BLE001  (older runtimes without memories API)
        return False


def checkpoint_policy(policy: str | RematPolicy) -> Callable[..., bool] | None:
    """The `jax.checkpoint` policy for `policy` (None = save nothing); error for NONE or an unknown name."""
    try:
        policy = RematPolicy(policy)
    except ValueError:
        raise ValueError(f"unknown remat policy {policy!r}; expected one of {[p.value for p in RematPolicy]}") from None
    cp = jax.checkpoint_policies
    if policy is RematPolicy.NONE:
        raise ValueError("remat policy 'none' has no checkpoint policy (the block is not rematerialised)")
    if policy is RematPolicy.OFFLOAD_NAMED:
        if host_offload_supported():
            return cp.save_and_offload_only_these_names(
                names_which_can_be_saved=(), names_which_can_be_offloaded=SAVED_NAMES,
                offload_src=OFFLOAD_SRC, offload_dst=OFFLOAD_DST)
        log.warning("remat policy 'offload_named': device %s has no %r memory; saving %s on device instead",
                    jax.devices()[0].device_kind, OFFLOAD_DST, SAVED_NAMES)
        policy = RematPolicy.SAVE_NAMED
    table = {
        RematPolicy.FULL: None,
        RematPolicy.DOTS_SAVEABLE: cp.dots_saveable,
        RematPolicy.DOTS_WITH_NO_BATCH_DIMS: cp.dots_with_no_batch_dims_saveable,
        RematPolicy.SAVE_ATTN_OUT: cp.save_only_these_names("attn_out"),
        RematPolicy.SAVE_NAMED: cp.save_only_these_names(*SAVED_NAMES),
    }
    return table[policy]


def apply(fn: Callable, policy: str | RematPolicy, *, prevent_cse: bool = False) -> Callable:
    """Wraps a block function `fn(block, *args)` in `nnx.remat` with `policy` (identity for 'none').

    `prevent_cse=False` suits a block inside a scanned loop; an unrolled block needs True, or XLA may merge the
    recomputed forward with the original one and keep every activation (seen with custom-VJP ops)."""
    if RematPolicy(policy) is RematPolicy.NONE:
        return fn
    return nnx.remat(fn, policy=checkpoint_policy(policy), prevent_cse=prevent_cse)
