"""models/custom_grads.py: the hand-written backward passes equal JAX autodiff of the same forwards.

Forwards must be bit-identical to the plain formulas; gradients agree to fp32 rounding (explicit tolerances),
also in bf16 (to bf16 rounding), under `jax.checkpoint`, and through a whole MMDiT loss.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dualfashion_jax.models import attention as attn_lib, custom_grads, mmdit, mmdit_config
from dualfashion_jax.perf import step as bench_step


def _plain_layer_norm(x, eps=1e-6):
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def _grads(fn, *xs, weights):
    """Gradients of sum(fn(*xs) * weights) w.r.t. every x (a non-trivial cotangent)."""
    return jax.grad(lambda *a: jnp.sum(fn(*a).astype(jnp.float32) * weights), argnums=tuple(range(len(xs))))(*xs)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _inputs(shape, n, dtype, seed=0):
    keys = jax.random.split(jax.random.key(seed), n)
    return [(jax.random.normal(k, shape) * 2.0 + 0.5).astype(dtype) for k in keys]


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 2e-6), (jnp.bfloat16, 2e-2)])
def test_layer_norm_forward_identical_and_gradient_matches_autodiff(dtype, tol):
    x, w = _inputs((3, 17, 64), 2, dtype)
    np.testing.assert_array_equal(np.asarray(custom_grads.layer_norm(x), np.float32),
                                  np.asarray(_plain_layer_norm(x), np.float32))
    (got,), (ref,) = _grads(custom_grads.layer_norm, x, weights=w), _grads(_plain_layer_norm, x, weights=w)
    assert got.dtype == x.dtype
    assert _rel(got, ref) < tol


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 2e-6), (jnp.bfloat16, 2e-2)])
def test_gelu_forward_identical_and_gradient_matches_autodiff(dtype, tol):
    u, w = _inputs((5, 33, 48), 2, dtype, seed=1)
    plain = lambda u: jax.nn.gelu(u, approximate=True)  # noqa: E731
    np.testing.assert_array_equal(np.asarray(custom_grads.gelu_tanh(u), np.float32), np.asarray(plain(u), np.float32))
    (got,), (ref,) = _grads(custom_grads.gelu_tanh, u, weights=w), _grads(plain, u, weights=w)
    assert got.dtype == u.dtype
    assert _rel(got, ref) < tol


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 5e-6), (jnp.bfloat16, 3e-2)])
def test_attention_forward_identical_and_gradients_match_autodiff(dtype, tol):
    q, k, v = _inputs((2, 40, 3, 16), 3, dtype, seed=2)
    (w,) = _inputs((2, 40, 3, 16), 1, jnp.float32, seed=3)
    fast = lambda q, k, v: attn_lib.attention(q, k, v, backend="xla")  # noqa: E731
    ref = lambda q, k, v: attn_lib.attention(q, k, v, backend="xla_autodiff")  # noqa: E731
    np.testing.assert_array_equal(np.asarray(fast(q, k, v), np.float32), np.asarray(ref(q, k, v), np.float32))
    for name, got, want in zip("qkv", _grads(fast, q, k, v, weights=w), _grads(ref, q, k, v, weights=w)):
        assert got.dtype == dtype, name
        assert _rel(got, want) < tol, (name, _rel(got, want))


def test_attention_gradient_under_checkpoint_and_jit():
    q, k, v = _inputs((1, 24, 2, 8), 3, jnp.float32, seed=4)
    (w,) = _inputs((1, 24, 2, 8), 1, jnp.float32, seed=5)
    for policy in (None, jax.checkpoint_policies.dots_saveable):
        fast = jax.checkpoint(lambda q, k, v: attn_lib.attention(q, k, v, backend="xla"), policy=policy)
        got = jax.jit(lambda *a: _grads(fast, *a, weights=w))(q, k, v)
        want = _grads(lambda q, k, v: attn_lib.attention(q, k, v, backend="xla_autodiff"), q, k, v, weights=w)
        assert max(_rel(a, b) for a, b in zip(got, want)) < 5e-6


def test_mmdit_loss_gradient_matches_autodiff_blocks():
    """The whole tiny MMDiT's parameter gradient with the hand-written rules vs with autodiff everywhere."""
    cfg = mmdit_config.get("tiny", dtype="float32")
    graph, params, rest = nnx.split(mmdit.DualMMDiT(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
    cfg_ad = dataclasses.replace(cfg, attention_backend="xla_autodiff")  # its graph only: built abstractly
    graph_ad = nnx.graphdef(nnx.eval_shape(lambda: mmdit.DualMMDiT(cfg_ad, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)
    h, w = cfg.latent_hw
    lat = jnp.asarray(rng.standard_normal((2, h, w, cfg.in_channels)), jnp.float32)
    txt = jnp.asarray(rng.standard_normal((2, 12, cfg.joint_attention_dim)), jnp.float32)

    def loss(p, g):
        v, logits = nnx.merge(g, p, rest)(lat, txt, jnp.array([300.0, 700.0]))
        return jnp.mean(jnp.square(v - 0.3)) + jnp.mean(jax.nn.log_softmax(logits)[..., 3])

    grad = jax.jit(jax.grad(loss), static_argnums=1)  # traced anew per graph (and inside the switch)
    got = grad(params, graph)
    fast_fns = (custom_grads.layer_norm, custom_grads.gelu_tanh)
    with custom_grads.autodiff_norms():
        want = grad(params, graph_ad)
    assert fast_fns == (custom_grads.layer_norm, custom_grads.gelu_tanh)  # restored
    leaves = jax.tree.leaves(jax.tree.map(lambda a, b: _rel(a, b), got, want))
    assert len(leaves) > 20 and max(leaves) < 1e-4, sorted(leaves)[-3:]
    assert max(leaves) > 0  # the two runs did differ: the switch took effect


def test_unrolled_full_remat_recomputes_with_custom_vjps():
    """Unrolled blocks under remat 'full' must recompute their forward (prevent_cse): more FLOPs than no remat."""
    base = mmdit_config.get("small", stage2=False, vocab_size=512, num_layers=2, scan_layers=False)
    mesh = bench_step.make_mesh("dp", jax.devices()[:1])
    out = {}
    for policy in ("none", "full"):
        compiled, _ = bench_step.lower_step(dataclasses.replace(base, remat_policy=policy),
                                            bench_step.StepShape(2, 64, 32), rules_name="dp", mesh=mesh)
        ca = compiled.cost_analysis()
        out[policy] = float((ca[0] if isinstance(ca, (list, tuple)) else ca)["flops"])
    assert out["full"] > 1.2 * out["none"], out
