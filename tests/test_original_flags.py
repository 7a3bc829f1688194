"""The flags that restore the PyTorch original's behaviour (docs/faithfulness.md), against NumPy references where
there is arithmetic: summed gradient accumulation, bf16 params + AdamW moments (ml_dtypes rounding after every torch
op), stage 3 without the stage-2 modules (its loss equality: tests/test_train_stages.py)."""
import jax
import jax.numpy as jnp
import ml_collections as mlc
import ml_dtypes
import numpy as np
import optax
import pytest
from flax import nnx

from configs import common
from dualfashion_jax.modeling.transformer import mmdit_config
from dualfashion_jax.training import optim, step as step_lib

BF16 = ml_dtypes.bfloat16


class _Linear(nnx.Module):
    def __init__(self, w):
        self.w = nnx.Param(jnp.asarray(w))


def _mse(model, frozen, batch, key):
    return jnp.mean(jnp.square(batch["x"] @ model.w[...] - batch["y"])), {}


def _ocfg(**kw):
    c = common.optim(lr=1e-3, warmup_steps=0, ema_decay=None)
    c.clip_norm = None
    c.update(kw)
    return c


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_grad_accum_reduce_matches_numpy(reduce):
    """SGD(lr=1) exposes the accumulated gradient: mean = full-batch grad, sum (the original) = accum x it."""
    rng = np.random.default_rng(0)
    x, y, w = rng.normal(size=(8, 3)), rng.normal(size=(8, 2)), rng.normal(size=(3, 2))
    accum = 4
    g, params, rest = nnx.split(_Linear(w.astype(np.float32)), nnx.Param, ...)
    tx = optax.sgd(1.0)
    fn = jax.jit(step_lib.make_step_fn(g, {}, _mse, tx, lambda c: 1.0, _ocfg(grad_accum_reduce=reduce), accum))
    state = step_lib.init_state(params, rest, tx, 0, False)
    state, m = fn(state, {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y, jnp.float32)}, {})
    # micro-batch i = rows i, i+4: each a mean over its 2 rows x 2 outputs
    micro = [2 / 4 * x[i::accum].T @ (x[i::accum] @ w - y[i::accum]) for i in range(accum)]
    grad = np.sum(micro, 0) / (accum if reduce == "mean" else 1)
    np.testing.assert_allclose(w - np.asarray(state["params"]["w"][...]), grad, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(m["grad_norm"]), np.linalg.norm(grad), rtol=1e-5)
    with pytest.raises(ValueError, match="config.optim.grad_accum_reduce"):
        optim.grad_accum_reduce(_ocfg(grad_accum_reduce="avg"))


def _f32(a):
    return np.asarray(a).astype(np.float32)


def _assert_bf16_equal(got, ref, max_frac=2e-3):
    """Bitwise equal except rare 1-ulp flips at fp32 rounding ties (XLA contracts `v + c*g*g` into an FMA, NumPy
    does not; torch's CUDA kernel may do either): those must be under `max_frac` of the elements."""
    got, ref = _f32(got), _f32(ref)
    ulp = np.abs(np.nextafter(ref.astype(BF16), np.array(np.inf, BF16)).astype(np.float32) - ref)
    diff = np.abs(got - ref)
    assert np.all(diff <= ulp), f"max diff {diff.max()} exceeds 1 bf16 ulp"
    assert np.mean(diff > 0) <= max_frac, f"{np.mean(diff > 0):.4%} of the elements differ"


def _torch_adamw_numpy(p, grads, lr, b1, b2, eps, wd):
    """torch.optim.AdamW (foreach) on bf16 params/moments: every op in fp32, rounded to bf16 (ml_dtypes)."""
    m, v = np.zeros_like(p), np.zeros_like(p)
    f = np.float32
    for t, g in enumerate(grads, start=1):
        g = _f32(g)
        p = (_f32(p) * f(1 - lr * wd)).astype(BF16)                   # param.mul_(1 - lr * wd)
        m = (_f32(m) + f(1 - b1) * (g - _f32(m))).astype(BF16)        # exp_avg.lerp_(grad, 1 - b1)
        v = (_f32(v) * f(b2)).astype(BF16)                             # exp_avg_sq.mul_(b2)
        v = (_f32(v) + f(1 - b2) * g * g).astype(BF16)                 # .addcmul_(grad, grad, 1 - b2)
        d = np.sqrt(_f32(v)).astype(BF16)                              # exp_avg_sq.sqrt()
        d = (_f32(d) / f(np.sqrt(1 - b2 ** t))).astype(BF16)           # / sqrt(bias_correction2)
        d = (_f32(d) + f(eps)).astype(BF16)                            # .add_(eps)
        p = (_f32(p) - f(lr / (1 - b1 ** t)) * (_f32(m) / _f32(d))).astype(BF16)  # addcdiv_(m, d, -step_size)
    return p, m, v


def test_bf16_adamw_matches_torch_emulation_and_rounds_updates_away():
    """5 AdamW steps at lr 3e-5 with `param_dtype`/`state_dtype` bf16 == the NumPy bf16 emulation; most weights of
    magnitude ~1 never move (spec §7.2 item 3; ~1e-3 ones do), while the fp32 default moves every one."""
    lr, n = 3e-5, 4096
    rng = np.random.default_rng(1)
    p0 = np.concatenate([rng.normal(0, 1, n // 2), rng.normal(0, 1e-3, n // 2)]).astype(BF16)
    grads = [rng.normal(0, 1e-2, n).astype(BF16) for _ in range(5)]
    cfg = _ocfg(lr=lr, param_dtype="bfloat16", state_dtype="bfloat16")
    tx, _ = optim.make_optimizer(cfg)
    params = {"w": jnp.asarray(p0)}
    st = tx.init(params)
    assert st[0].mu["w"].dtype == jnp.bfloat16 and st[0].nu["w"].dtype == jnp.bfloat16
    step = jax.jit(lambda g, s, p: (lambda u, s2: (optax.apply_updates(p, u), s2))(*tx.update(g, s, p)))
    for g in grads:
        params, st = step({"w": jnp.asarray(g)}, st, params)
    assert params["w"].dtype == jnp.bfloat16
    ref_p, ref_m, ref_v = _torch_adamw_numpy(p0, grads, lr, cfg.b1, cfg.b2, cfg.eps, cfg.weight_decay)
    for got, ref in ((params["w"], ref_p), (st[0].mu["w"], ref_m), (st[0].nu["w"], ref_v)):
        _assert_bf16_equal(got, ref)
    unmoved = _f32(params["w"]) == _f32(p0)
    assert unmoved[: n // 2].mean() > 0.9 and unmoved[n // 2:].mean() < 0.1

    tx32, _ = optim.make_optimizer(_ocfg(lr=lr))  # the default: fp32 master weights keep every update
    p32 = {"w": jnp.asarray(_f32(p0))}
    s32 = tx32.init(p32)
    for g in grads:
        u, s32 = tx32.update({"w": jnp.asarray(_f32(g))}, s32, p32)
        p32 = optax.apply_updates(p32, u)
    assert np.all(_f32(p32["w"]) != _f32(p0))
    with pytest.raises(ValueError, match="config.optim.state_dtype"):
        optim.make_optimizer(_ocfg(state_dtype="float16"))


def test_param_dtype_flag_reaches_the_model_config():
    """`config.optim.param_dtype="bfloat16"` stores the MMDiT params in bf16; the default keeps fp32."""
    c = mlc.ConfigDict(dict(stage="stage2", optim=common.optim(),
                            model=dict(preset="tiny", dtype="float32", attention_backend="xla", remat_policy="none")))
    assert mmdit_config(c).param_dtype == jnp.float32
    c.optim.param_dtype = "bfloat16"
    assert mmdit_config(c).param_dtype == jnp.bfloat16


def test_stage3_drop_stage2_flag_builds_the_model_without_them():
    """`config.model.stage3_drop_stage2=True` (the original's stage 3) drops the stage-2 modules; default keeps them."""
    from dualfashion_jax.models import mmdit

    c = mlc.ConfigDict(dict(stage="stage3", optim=common.optim(),
                            model=dict(preset="tiny", dtype="float32", attention_backend="xla", remat_policy="none",
                                       stage3_drop_stage2=False)))
    assert mmdit_config(c).stage2 is True
    c.model.stage3_drop_stage2 = True
    cfg = mmdit_config(c)
    assert cfg.stage2 is False
    model = nnx.eval_shape(lambda: mmdit.DualMMDiT(cfg, rngs=nnx.Rngs(0)))
    assert model.stage2 is None and "stage2" not in nnx.state(model, nnx.Param)
    c.stage = "stage2"  # the flag is about stage 3 only
    assert mmdit_config(c).stage2 is True
