"""Gradient-checkpointing policies for the scanned MMDiT block (a small enum -> `jax.checkpoint_policies`).

The block tags `qkv_img`, `qkv_txt`, `attn_out` and `mlp_hidden` with `checkpoint_name`; the policy
decides what the backward pass may keep instead of recomputing. Applied with `nnx.remat` per block.
"""
from __future__ import annotations

import enum
from typing import Callable

import jax
from flax import nnx


class RematPolicy(str, enum.Enum):
    """What to save in the forward pass of each block (everything else is recomputed)."""

    NONE = "none"                                        # no remat: save everything (fastest, most memory)
    FULL = "full"                                        # save nothing but the block inputs
    DOTS_SAVEABLE = "dots_saveable"                      # save all matmul outputs
    DOTS_WITH_NO_BATCH_DIMS = "dots_with_no_batch_dims"  # save matmuls without batch dims (weights x acts)
    SAVE_ATTN_OUT = "save_attn_out"                      # save only the attention output (recompute FF, qkv)


def checkpoint_policy(policy: str | RematPolicy) -> Callable[..., bool] | None:
    """The `jax.checkpoint` policy for `policy` (None = save nothing); error for NONE or an unknown name."""
    try:
        policy = RematPolicy(policy)
    except ValueError:
        raise ValueError(f"unknown remat policy {policy!r}; expected one of {[p.value for p in RematPolicy]}") from None
    cp = jax.checkpoint_policies
    table = {
        RematPolicy.FULL: None,
        RematPolicy.DOTS_SAVEABLE: cp.dots_saveable,
        RematPolicy.DOTS_WITH_NO_BATCH_DIMS: cp.dots_with_no_batch_dims_saveable,
        RematPolicy.SAVE_ATTN_OUT: cp.save_only_these_names("attn_out"),
    }
    if policy is RematPolicy.NONE:
        raise ValueError("remat policy 'none' has no checkpoint policy (the block is not rematerialised)")
    return table[policy]


def apply(fn: Callable, policy: str | RematPolicy) -> Callable:
    """Wraps a block function `fn(block, *args)` in `nnx.remat` with `policy` (identity for 'none')."""
    if RematPolicy(policy) is RematPolicy.NONE:
        return fn
    return nnx.remat(fn, policy=checkpoint_policy(policy), prevent_cse=False)
