"""DualMMDiT without torch: attention dispatch, remat policies, bf16 compute, heads, input errors, axis names."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dualfashion_jax.diffusion import losses
from dualfashion_jax.models import attention as attn_lib
from dualfashion_jax.models import mmdit, mmdit_config, remat
from dualfashion_jax.sharding import axes

CFG = mmdit_config.get("tiny")


@pytest.fixture(scope="module")
def model():
    return mmdit.DualMMDiT(CFG, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def batch():
    k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(k1, (2, 8, 8, CFG.in_channels))
    txt = jax.random.normal(k2, (2, 7, CFG.joint_attention_dim))
    t = jnp.array([5.0, 800.0])
    return x, txt, t


def _perturbed(cfg, seed=0):
    """A model whose zero-initialised params (biases) are randomised, so every path matters."""
    m = mmdit.DualMMDiT(cfg, rngs=nnx.Rngs(seed))

    @jax.jit
    def perturb(state, key):
        keys = iter(jax.random.split(key, len(jax.tree.leaves(state))))
        return jax.tree.map(lambda p: p + 0.05 * jax.random.normal(next(keys), p.shape, p.dtype), state)

    nnx.update(m, perturb(nnx.state(m, nnx.Param), jax.random.key(seed + 7)))
    return m


def _with_state(cfg, state):
    """A model of `cfg` holding `state` (no random init: built abstractly, then filled)."""
    m = nnx.eval_shape(lambda: mmdit.DualMMDiT(cfg, rngs=nnx.Rngs(0)))
    nnx.update(m, state)
    return m


# ----------------------------------------------------------------------------------------------------------
# Attention dispatch.
# ----------------------------------------------------------------------------------------------------------
def test_xla_attention_matches_numpy():
    q, k, v = (jax.random.normal(kk, (2, 5, 3, 8)) for kk in jax.random.split(jax.random.key(0), 3))
    out = attn_lib.attention(q, k, v, backend="xla")
    qn, kn, vn = (np.asarray(a, np.float64) for a in (q, k, v))
    logits = np.einsum("bqhd,bkhd->bhqk", qn, kn) / np.sqrt(8)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(out), np.einsum("bhqk,bkhd->bqhd", p, vn), atol=1e-5)


def test_attention_dispatch_on_cpu():
    q = jnp.ones((1, 4, 2, 8), jnp.bfloat16)
    assert jax.default_backend() == "cpu"
    with pytest.raises(ValueError, match="'cudnn' needs a GPU"):
        attn_lib.attention(q, q, q, backend="cudnn")
    assert attn_lib.resolve_backend("auto", jnp.bfloat16) == "xla"  # auto falls back off-GPU
    np.testing.assert_array_equal(np.asarray(attn_lib.attention(q, q, q, backend="auto"), np.float32),
                                  np.asarray(attn_lib.attention(q, q, q, backend="xla"), np.float32))
    with pytest.raises(ValueError, match="unknown attention backend 'flash9'"):
        attn_lib.attention(q, q, q, backend="flash9")
    if "splash" in attn_lib.available_backends():  # registered by attention_splash.py; TPU only
        with pytest.raises(ValueError, match="'splash' needs a TPU"):
            attn_lib.attention(q, q, q, backend="splash")
    with pytest.raises(ValueError, match=r"expected q \[B, Lq, H, Dh\]"):
        attn_lib.attention(q, q[:, :, :1], q, backend="xla")
    assert {"auto", "xla", "cudnn"} <= set(attn_lib.available_backends())


# ----------------------------------------------------------------------------------------------------------
# Forward behaviour.
# ----------------------------------------------------------------------------------------------------------
def test_shapes_heads_and_logits_slice(model, batch):
    x, txt, t = batch
    fwd = nnx.jit(lambda m, x, heads=mmdit.HEADS, n=None: m(x, txt, t, heads=heads, text_logits_len=n),
                  static_argnames=("heads", "n"))
    img, logits = fwd(model, x)
    assert img.shape == x.shape and logits.shape == (2, 7, CFG.vocab_size) and logits.dtype == jnp.float32
    img2, none = fwd(model, x, heads=("image",))
    assert none is None
    np.testing.assert_allclose(np.asarray(img2), np.asarray(img), atol=1e-6)
    none, sliced = fwd(model, x, heads=("text",), n=3)
    assert none is None
    np.testing.assert_allclose(np.asarray(sliced), np.asarray(logits[:, :3]), atol=1e-5)
    null, txt_logits = fwd(model, None)
    assert null.shape == (2, CFG.num_null_tokens, CFG.hidden_size) and txt_logits.shape == logits.shape


def test_unrolled_layers_match_scan(model, batch):
    x, txt, t = batch
    unrolled = _with_state(dataclasses.replace(CFG, scan_layers=False), nnx.state(model))
    fwd = nnx.jit(lambda m: m(x, txt, t))
    for a, b in zip(fwd(unrolled), fwd(model)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_non_square_latents_and_crop(model, batch):
    _, txt, t = batch
    x = jnp.ones((2, 4, 12, CFG.in_channels))
    img, _ = model(x, txt, t)
    assert img.shape == x.shape
    # A 2x6-patch latent sees the centred window of the 16x16 grid: rows 7..8, cols 5..10.
    grid = np.asarray(model.patch_embed.pos_embed[...]).reshape(16, 16, -1)
    np.testing.assert_array_equal(np.asarray(model.patch_embed.cropped_pos_embed(2, 6)),
                                  grid[7:9, 5:11].reshape(12, -1))


@pytest.mark.parametrize("bad, match", [
    (dict(txt=jnp.ones((2, 7, 5))), r"txt must be \[B, L, 32\]"),
    (dict(x=jnp.ones((2, 8, 8, 3))), r"x_img must be NHWC \[2, H, W, 16\]"),
    (dict(x=jnp.ones((2, 7, 8, 16))), "multiples of patch_size 2"),
    (dict(x=jnp.ones((2, 34, 8, 16))), "exceeds pos_embed_max_size 16"),
    (dict(t=jnp.ones((3,))), r"t must be \[B\]=\[2\]"),
    (dict(heads=("image", "caption")), r"unknown head\(s\) \['caption'\]"),
])
def test_bad_inputs_name_the_problem(model, batch, bad, match):
    x, txt, t = batch
    kw = dict(x=x, txt=txt, t=t)
    kw.update(bad)
    heads = kw.pop("heads", mmdit.HEADS)
    with pytest.raises(ValueError, match=match):
        model(kw["x"], kw["txt"], kw["t"], heads=heads)


def test_bf16_compute_close_to_fp32(batch):
    x, txt, t = batch
    cfg = dataclasses.replace(CFG, stage2=False)
    m32 = _perturbed(cfg)
    m16 = _with_state(dataclasses.replace(cfg, dtype=jnp.bfloat16), nnx.state(m32))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(m16, nnx.Param)))  # fp32 params
    fwd = nnx.jit(lambda m, x, txt, t: m(x, txt, t))
    img32, log32 = fwd(m32, x, txt, t)
    img16, log16 = fwd(m16, x, txt, t)
    assert img16.dtype == jnp.bfloat16 and log16.dtype == jnp.float32
    # Loose tolerance for bf16 compute (8-bit mantissa): max error <= 10% of the output std.
    for a, b in ((img16, img32), (log16, log32)):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert np.max(np.abs(a - b)) <= 0.1 * b.std(), (np.max(np.abs(a - b)), b.std())


@pytest.mark.slow
def test_remat_policies_same_forward_and_grad(batch):
    x, txt, t = batch
    cfg = dataclasses.replace(CFG, stage2=False)
    state = nnx.state(_perturbed(cfg))

    def loss(m):
        img, logits = m(x, txt, t)
        return jnp.mean(img ** 2) + jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    def loss_and_grad(policy):
        m = _with_state(dataclasses.replace(cfg, remat_policy=policy), state)
        graphdef, params = nnx.split(m)
        jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: loss(nnx.merge(graphdef, p))))(params))
        assert ("checkpoint" in jaxpr or "remat" in jaxpr) == (policy != "none"), policy  # remat really applied
        val, grads = nnx.jit(nnx.value_and_grad(loss))(m)
        return float(val), jax.tree.leaves(nnx.state(grads, nnx.Param))

    ref_val, ref_grads = loss_and_grad("none")
    assert any(float(jnp.abs(g).max()) > 0 for g in ref_grads)
    for policy in [p.value for p in remat.RematPolicy if p is not remat.RematPolicy.NONE]:
        val, grads = loss_and_grad(policy)
        assert abs(val - ref_val) <= 1e-6 * max(1.0, abs(ref_val)), policy
        for g, r in zip(grads, ref_grads):
            np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-6, rtol=1e-4, err_msg=policy)


def test_stage2_offset_modes():
    m = mmdit.DualMMDiT(CFG, rngs=nnx.Rngs(0))
    ctx = jax.random.normal(jax.random.key(2), (2, 8, 8, CFG.in_channels))
    a = m.stage2.offset(ctx, deterministic=True)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(m.stage2.offset(ctx, deterministic=True)))
    b = m.stage2.offset(ctx, deterministic=False)  # dropout from the module's own RNG stream
    assert a.shape == b.shape == ctx.shape and not np.allclose(np.asarray(a), np.asarray(b))
    k1, k2 = (m.stage2.offset(ctx, deterministic=False, rngs=jax.random.key(9)) for _ in range(2))  # explicit key
    np.testing.assert_array_equal(np.asarray(k1), np.asarray(k2))
    assert not np.allclose(np.asarray(k1), np.asarray(a))
    assert float(jnp.max(jnp.abs(a))) <= 1.0  # tanh output
    with pytest.raises(ValueError, match=r"expected latents \[B, 8, 8, 16\]"):
        m.stage2.offset(jnp.ones((2, 4, 4, CFG.in_channels)))
    assert m.stage2.target_role.shape == (1, 1, 1, CFG.in_channels)
    gor = mmdit.DualMMDiT(dataclasses.replace(CFG, stage2_variant="gor_projector"), rngs=nnx.Rngs(0))
    # Fresh GOR modules: zero projector, gate 0 -> offset is exactly r_t.
    np.testing.assert_array_equal(np.asarray(gor.stage2.offset(ctx)),
                                  np.broadcast_to(np.asarray(gor.stage2.target_role[...]), ctx.shape))
    assert mmdit.DualMMDiT(dataclasses.replace(CFG, stage2=False), rngs=nnx.Rngs(0)).stage2 is None


def test_every_param_has_logical_axes(model):
    known = {v for k, v in vars(axes).items() if k.isupper()}
    for path, var in nnx.state(model, nnx.Param).flat_state():
        name = "/".join(map(str, path))
        spec = var.get_metadata().get("out_sharding")
        assert spec is not None and len(spec) == var.get_value().ndim, (name, spec)
        assert all(a is None or a in known for a in spec), (name, spec)
        if name.startswith("blocks/"):
            assert spec[0] == axes.LAYERS, (name, spec)


def test_config_round_trip_and_validation():
    for name in ("tiny", "small", "sd3_medium"):
        cfg = dataclasses.replace(mmdit_config.get(name), dtype=jnp.bfloat16, latent_size=(8, 12) if name == "tiny" else 64)
        assert mmdit_config.MMDiTConfig.from_dict(cfg.to_dict()) == cfg
    sd3 = mmdit_config.get("sd3_medium")
    assert (sd3.hidden_size, sd3.num_layers, sd3.vocab_size, sd3.latent_hw) == (1536, 24, 32100, (64, 64))
    assert mmdit_config.get("tiny", dtype="bfloat16").dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="MMDiTConfig.dtype: not a dtype"):
        mmdit_config.get("tiny", dtype="float99")
    with pytest.raises(ValueError, match="unknown MMDiTConfig field"):
        mmdit_config.MMDiTConfig.from_dict({"num_layer": 3}, source="cfg.json")
    with pytest.raises(ValueError, match="remat_policy must be one of"):
        mmdit_config.get("tiny", remat_policy="everything")
    with pytest.raises(ValueError, match="unknown MMDiT preset"):
        mmdit_config.get("sd3_large")
    with pytest.raises(ValueError, match="latent_size"):
        mmdit_config.get("tiny", latent_size=(8, 7))


def test_converted_checkpoint_round_trip_without_torch(model, batch, tmp_path):
    """save_converted(kind="mmdit") -> DualFashionTransformer.from_pretrained -> same outputs in NCHW layout."""
    from dualfashion_jax.core import converted, params as core_params
    from dualfashion_jax.conversion import mmdit as conv
    from dualfashion_jax.modeling import api

    x, txt, t = batch
    flat = {**core_params.flat_params(model), conv.POS_EMBED_KEY: np.asarray(model.patch_embed.pos_embed[...])}
    converted.save_converted(tmp_path / "ckpt", kind="mmdit", config=CFG.to_dict(), params=flat)
    loaded = api.DualFashionTransformer.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == CFG
    img, logits = loaded(np.asarray(x).transpose(0, 3, 1, 2), np.asarray(txt), np.asarray(t))
    ref_img, ref_logits = nnx.jit(lambda m: m(x, txt, t))(model)
    np.testing.assert_allclose(np.asarray(img), np.asarray(ref_img).transpose(0, 3, 1, 2), atol=1e-5)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ref_logits), atol=1e-5)
    with pytest.raises(ValueError, match="holds a 'vae' checkpoint, expected 'mmdit'"):
        converted.save_converted(tmp_path / "vae", kind="vae", config={}, params={"a": np.zeros(1)})
        api.DualFashionTransformer.from_pretrained(tmp_path / "vae")


def test_convert_cli_errors_are_clean(tmp_path, capsys):
    from dualfashion_jax import cli

    assert cli.main(["convert", "transformer", str(tmp_path / "nope"), str(tmp_path / "out")]) == 1
    assert "transformer checkpoint file or folder does not exist" in capsys.readouterr().err
    (tmp_path / "w.safetensors").write_bytes(b"\x00" * 4)
    assert cli.main(["convert", "transformer", str(tmp_path / "w.safetensors"), str(tmp_path / "out")]) == 1
    assert "no config.json next to the weights" in capsys.readouterr().err
    assert cli.main(["convert", "vae", str(tmp_path / "nope"), str(tmp_path / "out")]) == 1  # lazily imported


def test_sample_prediction_returns_the_velocity_of_its_x0(batch):
    """prediction="sample": the head's output is x0_hat, so x_in - sigma F gives it back (loss and sampler
    read x0 that way), the loss is plain ||head - x0||^2, and t = 0 stays finite."""
    x, txt, t = batch
    vel_model = _perturbed(CFG)
    smp_model = _with_state(dataclasses.replace(CFG, prediction="sample"), nnx.state(vel_model))
    head = np.asarray(nnx.jit(lambda m: m(x, txt, t, heads=("image",))[0])(vel_model), np.float64)
    f = np.asarray(nnx.jit(lambda m: m(x, txt, t, heads=("image",))[0])(smp_model), np.float64)
    sigma = np.asarray(t, np.float64)[:, None, None, None] / 1000.0
    np.testing.assert_allclose(np.asarray(x, np.float64) - sigma * f, head, atol=2e-5)
    x0 = np.asarray(jax.random.normal(jax.random.key(3), x.shape), np.float64)
    got = losses.flow_x0_loss(jnp.asarray(f, jnp.float32), x, jnp.asarray(x0, jnp.float32), t / 1000.0)
    np.testing.assert_allclose(np.asarray(got), np.mean((head - x0) ** 2, axis=(1, 2, 3)), rtol=1e-4)
    at_zero = nnx.jit(lambda m: m(x, txt, jnp.zeros_like(t), heads=("image",))[0])(smp_model)
    assert np.isfinite(np.asarray(at_zero)).all()
    with pytest.raises(ValueError, match="prediction must be one of"):
        mmdit_config.get("tiny", prediction="noise")
