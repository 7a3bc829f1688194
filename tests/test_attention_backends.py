"""Attention backends on CPU: dispatch (auto/cudnn/splash/fallback) and the splash wrapper's padding,
segment ids and shard_map, run with the real Pallas splash kernel in interpret mode on 8 fake devices."""
import dataclasses
import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dualfashion_jax.models import attention as attn_lib
from dualfashion_jax.models import attention_splash as splash
from dualfashion_jax.models import mmdit, mmdit_config
from dualfashion_jax.sharding import mesh as mesh_lib

BLOCKS_128 = splash.SplashBlocks(*(128,) * 8)
TOL = 1e-5  # fp32 (highest matmul precision): kernel and XLA reference differ only by summation order


@pytest.fixture(scope="module")
def qkv():
    # [B=4, L=200, H=4, Dh=16]: L pads to 256 (two 128 blocks), so padding crosses a block boundary.
    return tuple(jax.random.normal(k, (4, 200, 4, 16)) for k in jax.random.split(jax.random.key(0), 3))


@pytest.fixture(scope="module")
def mesh8():
    assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
    return mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})


def _close(a, b, tol=TOL):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=tol, rtol=tol)


# ----------------------------------------------------------------------------------------------------------
# Dispatch.
# ----------------------------------------------------------------------------------------------------------
def test_registry_and_auto_per_platform(monkeypatch):
    assert {"auto", "xla", "cudnn", "splash"} <= set(attn_lib.available_backends())
    assert attn_lib.resolve_backend("auto", jnp.bfloat16) == "xla"  # CPU
    for platform, dtype, want in [("gpu", jnp.bfloat16, "cudnn"), ("gpu", jnp.float16, "cudnn"),
                                  ("gpu", jnp.float32, "xla"), ("tpu", jnp.bfloat16, "splash"),
                                  ("tpu", jnp.float32, "splash"), ("cpu", jnp.bfloat16, "xla")]:
        monkeypatch.setattr(attn_lib, "_platform", lambda p=platform: p)
        assert attn_lib.resolve_backend("auto", dtype) == want, (platform, dtype)
    monkeypatch.setattr(attn_lib, "_platform", lambda: "gpu")
    with pytest.raises(ValueError, match="'cudnn' needs bfloat16/float16 inputs, got float32"):
        attn_lib.resolve_backend("cudnn", jnp.float32)
    assert attn_lib.resolve_backend("cudnn", jnp.bfloat16) == "cudnn"


def test_named_backend_off_platform_errors_or_falls_back(qkv, caplog):
    q, k, v = (x[:, :8] for x in qkv)
    ref = attn_lib.attention(q, k, v, backend="xla")
    for name, msg in (("splash", "'splash' needs a TPU, but JAX runs on 'cpu'"), ("cudnn", "'cudnn' needs a GPU")):
        with pytest.raises(ValueError, match=msg):
            attn_lib.attention(q, k, v, backend=name)
        with caplog.at_level(logging.WARNING, logger=attn_lib.__name__):
            out = attn_lib.attention(q, k, v, backend=name, fallback="xla")
        assert "falling back to attention backend 'xla'" in caplog.text and name in caplog.text
        caplog.clear()
        _close(out, ref, 0)
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        attn_lib.attention(q, k, v, backend="flash")
    with pytest.raises(ValueError, match="unknown attention backend 'nope'"):
        attn_lib.attention(q, k, v, backend="splash", fallback="nope")


# ----------------------------------------------------------------------------------------------------------
# Splash block sizes and padding.
# ----------------------------------------------------------------------------------------------------------
def test_block_fit_and_chip_table():
    blocks, lp = splash.SplashBlocks().fit(1280)  # sd3_medium: 1024 image + 256 text tokens
    assert (blocks.block_q, lp) == (512, 1536)
    blocks, lp = splash.SplashBlocks().fit(23)  # tiny: blocks shrink to one 128 tile
    assert (blocks.block_q, blocks.block_kv_dq, lp) == (128, 128, 128)
    assert splash.SplashBlocks(256, 384, 128, 128, 128, 128, 128, 128).fit(700)[1] == 768  # lcm(256, 384)
    assert splash.blocks_for_chip("TPU v6 lite") == splash.CHIP_BLOCKS["TPU v6"]
    assert splash.blocks_for_chip("TPU v5p") == splash.CHIP_BLOCKS["TPU v5"]
    assert splash.blocks_for_chip("cpu") == splash.CHIP_BLOCKS["default"]
    with pytest.raises(ValueError, match="SplashBlocks.block_kv must be a positive multiple of 128, got 100"):
        splash.SplashBlocks(block_kv=100)
    with pytest.raises(ValueError, match="self-attention needs q, k, v of one shape"):
        x = jnp.zeros((1, 8, 2, 4))
        splash.splash_attention(x, x[:, :4], x[:, :4], scale=1.0)


def test_segment_ids_mask_the_padding(qkv):
    """Without the segment-id mask the padded keys would leak into the softmax: the test can fail."""
    q, k, v = qkv
    ref = attn_lib.attention(q, k, v, backend="xla")
    out = splash.splash_attention(q, k, v, scale=0.25, blocks=BLOCKS_128, mesh=None,
                                  kernel_factory=splash.reference_kernel_factory)
    _close(out, ref)

    def unmasked(h, lp, b, i):
        kern = splash.reference_kernel_factory(h, lp, b, i)
        return lambda q_, k_, v_, seg: kern(q_, k_, v_, jnp.ones_like(seg))

    leaky = splash.splash_attention(q, k, v, scale=0.25, blocks=BLOCKS_128, kernel_factory=unmasked)
    assert float(jnp.max(jnp.abs(leaky - ref))) > 1e-2


# ----------------------------------------------------------------------------------------------------------
# Splash in shard_map over 8 fake devices: the real Pallas kernel (interpret mode) and the injected reference.
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel", ["pallas_interpret", "reference"])
def test_sharded_splash_matches_unsharded_xla(qkv, mesh8, kernel):
    q, k, v = qkv
    kw = dict(interpret=True) if kernel == "pallas_interpret" else dict(kernel_factory=splash.reference_kernel_factory)
    fn = functools.partial(splash.splash_attention, scale=0.25, blocks=BLOCKS_128, **kw)
    ref_out, ref_vjp = jax.vjp(lambda q, k, v: attn_lib.attention(q, k, v, backend="xla"), q, k, v)
    ct = jax.random.normal(jax.random.key(3), ref_out.shape)

    @jax.jit
    def run(q, k, v):
        out, vjp = jax.vjp(fn, q, k, v)
        return out, vjp(ct)

    with jax.set_mesh(mesh8):  # context mesh: batch over (data, fsdp), heads over tensor
        out, grads = run(q, k, v)
        jaxpr = str(jax.make_jaxpr(fn)(q, k, v))
    assert "shard_map" in jaxpr
    _close(out, ref_out)
    for g, r in zip(grads, ref_vjp(ct)):
        _close(g, r)


@pytest.mark.slow
def test_model_with_splash_backend_matches_xla(monkeypatch, mesh8):
    """Tiny DualMMDiT with attention_backend='splash' and save_named remat (platform faked as TPU, kernel in
    interpret mode, batch 2 -> only `data` divides it, heads 2 over `tensor`): same loss and grads as XLA."""
    cfg = dataclasses.replace(mmdit_config.get("tiny"), stage2=False)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, cfg.in_channels))
    txt = jax.random.normal(jax.random.key(2), (2, 7, cfg.joint_attention_dim))
    t = jnp.array([5.0, 800.0])

    def loss_and_grads(c):
        def loss(m):
            img, logits = m(x, txt, t)
            return jnp.mean(img ** 2) + jnp.mean(jax.nn.log_softmax(logits)[..., 0])
        val, g = nnx.jit(nnx.value_and_grad(loss))(mmdit.DualMMDiT(c, rngs=nnx.Rngs(0)))
        return val, jax.tree.leaves(nnx.state(g, nnx.Param))

    ref_val, ref_grads = loss_and_grads(cfg)
    real, calls = splash.pallas_kernel_factory, []

    def interpreted(h, lp, b, interpret):
        calls.append((h, lp))
        return real(h, lp, b, True)

    monkeypatch.setattr(attn_lib, "_platform", lambda: "tpu")
    monkeypatch.setattr(splash, "pallas_kernel_factory", interpreted)
    with jax.set_mesh(mesh8):
        val, grads = loss_and_grads(dataclasses.replace(cfg, attention_backend="splash", remat_policy="save_named"))
    assert calls and set(calls) == {(1, 128)}  # the kernel really ran: 1 local head, 23 tokens padded to 128
    assert abs(float(val) - float(ref_val)) <= 1e-5
    for g, r in zip(grads, ref_grads):
        _close(g, r, 1e-4)
