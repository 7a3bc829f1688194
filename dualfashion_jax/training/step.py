"""The jitted, sharded train step: gradient accumulation (mean, or the original's sum), AdamW, EMA, metrics.

Functional NNX pattern: the model is `nnx.split` once (graphdef, params, rest) outside; inside the step,
`nnx.merge` rebuilds it for the loss. Frozen modules (T5, VAE) and constants are passed as a separate,
non-differentiated argument (`frozen`: module states for names in `frozen_graphdefs`, plain arrays otherwise),
so they are never in the optimizer. The train state is a plain dict pytree:
  {"params", "rest" (non-Param model state, e.g. dropout RNG counters), "opt", "ema", "step", "rng"}.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from dualfashion_jax.sharding import rules as rules_lib
from dualfashion_jax.training import optim

# loss_fn(model, frozen_modules, batch, key) -> (scalar loss, {name: scalar})
LossFn = Callable[[nnx.Module, Mapping[str, nnx.Module], Mapping[str, jax.Array], jax.Array],
                  tuple[jax.Array, dict[str, jax.Array]]]


def init_state(params: nnx.State, rest: nnx.State, tx: optax.GradientTransformation, seed: int,
               use_ema: bool) -> dict[str, Any]:
    """A fresh train state (call under `jax.jit(..., out_shardings=...)` to create it sharded)."""
    return {
        "params": params,
        "rest": rest,
        "opt": tx.init(params),
        "ema": jax.tree.map(jnp.copy, params) if use_ema else {},
        "step": jnp.zeros((), jnp.int32),
        "rng": jax.random.key_data(jax.random.key(seed)),  # [2] uint32: checkpoint-friendly raw key
    }


def split_micro(batch: Mapping[str, jax.Array], accum: int) -> dict[str, jax.Array]:
    """[B, ...] -> [accum, B/accum, ...]; micro-batch i takes rows i, i+accum, ... (keeps shards local)."""
    out = {}
    for k, x in batch.items():
        if x.shape[0] % accum:
            raise ValueError(f"batch[{k!r}] has {x.shape[0]} rows, not divisible by grad_accum={accum}")
        out[k] = x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)  # [A, B/A, ...]
    return out


def make_step_fn(graphdef: nnx.GraphDef, frozen_graphdefs: Mapping[str, nnx.GraphDef], loss_fn: LossFn,
                 tx: optax.GradientTransformation, schedule: optax.Schedule, optim_cfg, grad_accum: int = 1,
                 mesh=None) -> Callable:
    """Returns the pure `step(state, batch, frozen) -> (state, metrics)` (not yet jitted)."""
    use_ema = optim_cfg.ema_decay is not None
    accum_sum = optim.grad_accum_reduce(optim_cfg) == "sum"  # "sum": the original (spec §7.2 item 5)
    micro_sharding = None if mesh is None else NamedSharding(mesh, P(None, rules_lib.BATCH))

    def loss_of(params, rest, frozen, mb, key):
        model = nnx.merge(graphdef, params, rest)
        fz = {n: nnx.merge(frozen_graphdefs[n], v) if n in frozen_graphdefs else v for n, v in frozen.items()}
        loss, metrics = loss_fn(model, fz, mb, key)
        new_rest = nnx.state(model, nnx.Not(nnx.Param))
        return loss.astype(jnp.float32), (metrics, new_rest)

    grad_fn = jax.value_and_grad(loss_of, has_aux=True)

    def step(state, batch, frozen):
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        params, rest = state["params"], state["rest"]
        if grad_accum == 1:
            (loss, (metrics, rest)), grads = grad_fn(params, rest, frozen, batch, key)
        else:
            micro = split_micro(batch, grad_accum)
            if micro_sharding is not None:
                micro = jax.lax.with_sharding_constraint(micro, micro_sharding)

            def body(carry, xs):
                g_acc, rest = carry
                i, mb = xs
                (l, (m, rest)), g = grad_fn(params, rest, frozen, mb, jax.random.fold_in(key, i))
                return (jax.tree.map(jnp.add, g_acc, g), rest), (l, m)

            zeros = jax.tree.map(jnp.zeros_like, params)
            (grads, rest), (losses, ms) = jax.lax.scan(body, (zeros, rest), (jnp.arange(grad_accum), micro))
            if not accum_sum:
                grads = jax.tree.map(lambda g: g / grad_accum, grads)  # AVERAGE by default (spec §7.2 item 5)
            loss = losses.mean()
            metrics = jax.tree.map(lambda m: m.mean(0), ms)
        grad_norm = optax.global_norm(grads)
        updates, opt = tx.update(grads, state["opt"], params)
        params = optax.apply_updates(params, updates)
        step_no = state["step"] + 1
        ema = state["ema"]
        if use_ema:
            ema = optim.ema_update(ema, params, step_no, float(optim_cfg.ema_decay), int(optim_cfg.ema_start_step))
        out_metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state["step"]),
                       **{k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}}
        new_state = {"params": params, "rest": rest, "opt": opt, "ema": ema, "step": step_no, "rng": state["rng"]}
        return new_state, out_metrics

    return step


def jit_step(step_fn: Callable, state_shardings: Any, batch_sharding: NamedSharding, frozen_shardings: Any,
             mesh) -> Callable:
    """`jax.jit` with explicit in/out shardings; the train state (arg 0) is donated."""
    replicated = NamedSharding(mesh, P())
    return jax.jit(step_fn, in_shardings=(state_shardings, batch_sharding, frozen_shardings),
                   out_shardings=(state_shardings, replicated), donate_argnums=(0,))
