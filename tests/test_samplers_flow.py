"""Euler flow sampler + 4-way guidance vs a diffusers-scheduler-driven loop and NumPy loops on a toy model."""
import numpy as np
import pytest
import jax
import jax.numpy as jnp

from dualfashion_jax.diffusion import flow
from dualfashion_jax.samplers import flow_euler as fe

B, H, W, C, L, D = 2, 4, 4, 3, 5, 6
_r = np.random.default_rng(0)
P = {"w": _r.normal(size=C).astype(np.float32), "p": (_r.normal(size=(D, C)) * 0.3).astype(np.float32),
     "b": _r.normal(size=C).astype(np.float32)}


def toy(xp, p):
    def model_fn(x_img, txt, t, *, heads, text_logits_len):
        assert heads == ("image",)
        u = txt[:, : txt.shape[1] // 2].mean(1) @ p["p"] + 2 * txt[:, txt.shape[1] // 2:].mean(1) @ p["p"]
        return xp.tanh(x_img * p["w"] + u[:, None, None, :] + (t / 1000)[:, None, None, None] * p["b"]), None
    return model_fn


NP_MODEL = toy(np, P)
J_MODEL = toy(jnp, {k: jnp.asarray(v) for k, v in P.items()})


@pytest.fixture(scope="module")
def inputs():
    x = _r.normal(size=(B, H, W, C)).astype(np.float32)
    c = (_r.normal(size=(B, H, W, C)) * 0.5).astype(np.float32)
    neg, sent, pref = (_r.normal(size=(B, L, D)).astype(np.float32) for _ in range(3))
    return x, c, neg, sent, pref


def np_guided_v(x, sigma, c, neg, sent, pref, scales=(8.0, 7.0, 8.0), lam=0.1, mode="four_way", train=False,
                cfg_scale=7.0, role=None, space="velocity"):
    """Transcription of the original loop body (spec §5.1); train=True: the (1-lam) x + lam c variant;
    space="x0": each branch's output F becomes (x - (x_in - sigma F)) / sigma before the mix."""
    t = np.full(x.shape[0], sigma * 1000, np.float32)
    z = x if role is None else x + (1 - sigma) * role
    plain, ctx = ((1 - lam) * z, (1 - lam) * z + lam * c) if train else (x, x + lam * c)

    def run(lat, a, b):
        f = NP_MODEL(lat, np.concatenate([a, b], 1), t, heads=("image",), text_logits_len=None)[0]
        return f if space == "velocity" else (x - (lat - sigma * f)) / sigma
    if mode == "none":
        return run(ctx, pref, sent)
    if mode == "cfg":
        v0, vp = run(plain, neg, neg), run(ctx, pref, sent)
        return v0 + cfg_scale * (vp - v0)
    v0, vt, vm, vp = run(plain, neg, neg), run(plain, neg, sent), run(ctx, neg, sent), run(ctx, pref, sent)
    st, sm, sp = scales
    return v0 + st * (vt - v0) + sm * (vm - vt) + sp * (vp - vm)


@pytest.mark.torch
def test_sigmas_equal_diffusers():
    pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    for n, shift in ((28, 3.0), (50, 3.0), (7, 1.0)):
        s = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
        s.set_timesteps(n)
        np.testing.assert_array_equal(flow.inference_sigmas(n, shift), s.sigmas.numpy())  # exact
    sig = flow.inference_sigmas(28, 3.0)
    assert sig[0] == 1.0 and sig[-1] == 0.0 and abs(sig[-2] - 0.00893) < 1e-5 and abs(sig[-3] - 0.1109) < 1e-4


@pytest.mark.torch
def test_four_way_matches_diffusers_loop(inputs):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    x, c, neg, sent, pref = inputs
    n = 6
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(n)
    lat = torch.from_numpy(x.copy())
    for i, t in enumerate(sched.timesteps):
        v = np_guided_v(lat.numpy(), float(sched.sigmas[i]), c, neg, sent, pref)
        lat = sched.step(torch.from_numpy(v.astype(np.float32)), t, lat).prev_sample
    cfg = fe.GuidanceConfig.original(num_steps=n)
    got = fe.sample_images(J_MODEL, jnp.asarray(x), jnp.asarray(c), jnp.asarray(neg), jnp.asarray(sent),
                           jnp.asarray(pref), cfg)
    np.testing.assert_allclose(np.asarray(got), lat.numpy(), rtol=1e-4, atol=1e-4)  # fp32, 6 steps x scale ~23


@pytest.mark.parametrize("mode,train,with_role,space", [
    ("four_way", True, False, "velocity"), ("four_way", True, True, "velocity"), ("four_way", True, True, "x0"),
    ("four_way", False, False, "x0"), ("cfg", False, False, "velocity"), ("cfg", True, True, "x0"),
    ("none", False, False, "velocity"), ("none", True, True, "x0")])
def test_modes_match_numpy_euler(inputs, mode, train, with_role, space):
    x, c, neg, sent, pref = inputs
    role = (_r.normal(size=(1, 1, 1, C)) * 0.3).astype(np.float32) if with_role else None
    n = 5
    sig = flow.inference_sigmas(n, 3.0)
    ref = x.copy()
    for i in range(n):
        ref = ref + (sig[i + 1] - sig[i]) * np_guided_v(ref, sig[i], c, neg, sent, pref, mode=mode, train=train,
                                                        role=role, space=space)
    cfg = fe.GuidanceConfig(num_steps=n, mode=mode, match_train_input=train, space=space)
    r_t = None if role is None else jnp.asarray(role)
    got = jax.jit(lambda *a: fe.sample_images(J_MODEL, *a, cfg, target_role=r_t))(
        *map(jnp.asarray, (x, c, neg, sent, pref)))
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["four_way", "cfg"])
def test_guidance_interval_matches_numpy_euler(inputs, mode):
    """Guidance only at steps with 0.3 <= sigma <= 0.9; the other steps use vP alone (the 'none' velocity)."""
    x, c, neg, sent, pref = inputs
    n, lo, hi = 6, 0.3, 0.9
    sig = flow.inference_sigmas(n, 3.0)
    assert (sig[:n] > hi).any() and ((sig[:n] >= lo) & (sig[:n] <= hi)).any() and (sig[:n] < lo).any()
    ref = x.copy()
    for i in range(n):
        m = mode if lo <= sig[i] <= hi else "none"
        ref = ref + (sig[i + 1] - sig[i]) * np_guided_v(ref, sig[i], c, neg, sent, pref, mode=m, train=True)
    cfg = fe.GuidanceConfig(num_steps=n, mode=mode, match_train_input=True, interval=(lo, hi), space="velocity")
    got = jax.jit(lambda *a: fe.sample_images(J_MODEL, *a, cfg))(*map(jnp.asarray, (x, c, neg, sent, pref)))
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4, atol=1e-4)
    full = fe.sample_images(J_MODEL, *map(jnp.asarray, (x, c, neg, sent, pref)),
                            fe.GuidanceConfig(num_steps=n, mode=mode, match_train_input=True, space="velocity"))
    assert not np.allclose(np.asarray(got), np.asarray(full), atol=1e-3)
    with pytest.raises(ValueError, match="interval"):
        fe.GuidanceConfig(interval=(0.8, 0.2))


def test_zero_scales_run_only_the_preference_branch(inputs):
    x, c, neg, sent, pref = map(jnp.asarray, inputs)
    zero = fe.GuidanceConfig(num_steps=3, text_scale=0, context_scale=0, preference_scale=0)
    assert zero.num_branches == 1
    a = fe.sample_images(J_MODEL, x, c, neg, sent, pref, zero)
    b = fe.sample_images(J_MODEL, x, c, neg, sent, pref, fe.GuidanceConfig(num_steps=3, mode="none"))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_initial_noise_is_per_request_deterministic():
    shape = (3, H, W, C)
    a = fe.initial_noise(7, jnp.asarray([1, 1, 2]), jnp.asarray([5, 5, 5]), jnp.asarray([0, 1, 0]), shape)
    single = fe.initial_noise(7, 1, 5, 1, (1, H, W, C))
    np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(single[0]))
    key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(jax.random.key(7), 2), 5), 0)
    np.testing.assert_array_equal(np.asarray(a[2]), np.asarray(jax.random.normal(key, (H, W, C))))
    assert not np.allclose(np.asarray(a[0]), np.asarray(a[1]))
    assert not np.allclose(np.asarray(a[0]), np.asarray(fe.initial_noise(8, 1, 5, 0, (1, H, W, C))[0]))


def test_bad_inputs(inputs):
    x, c, neg, sent, pref = map(jnp.asarray, inputs)
    with pytest.raises(ValueError, match="pref_emb"):
        fe.sample_images(J_MODEL, x, c, neg, sent, pref[:, :3], fe.GuidanceConfig(num_steps=2))
    with pytest.raises(ValueError, match="context offset"):
        fe.sample_images(J_MODEL, x, c[:1], neg, sent, pref, fe.GuidanceConfig(num_steps=2))
    with pytest.raises(ValueError, match="mode"):
        fe.GuidanceConfig(mode="triple")


def test_x0_space_guidance_is_exact_for_a_perfect_x0_predictor(inputs):
    """A network whose x0_hat = x_in - sigma F is z* on every branch (what training asks for) lands on z*
    under the default x0-space guidance with r_t; velocity-space mixing of the same outputs is biased by
    -lam c / sigma terms (about -sP lam c at the end, issue #16)."""
    x, c, neg, sent, pref = map(jnp.asarray, inputs)
    z_star = jax.random.normal(jax.random.key(3), x.shape)
    r_t = 0.3 * jax.random.normal(jax.random.key(4), (1, 1, 1, x.shape[-1]))
    c = 3.0 * c  # a visible offset

    def perfect(lat, txt, t, *, heads, text_logits_len):
        s = (t / 1000.0)[:, None, None, None]
        return (lat - jnp.concatenate([z_star] * (lat.shape[0] // z_star.shape[0]))) / s, None

    x0_cfg = fe.GuidanceConfig(num_steps=8)
    assert (x0_cfg.space, x0_cfg.match_train_input) == ("x0", True)  # the defaults
    got = fe.sample_images(perfect, x, c, neg, sent, pref, x0_cfg, target_role=r_t)
    np.testing.assert_allclose(np.asarray(got), np.asarray(z_star), atol=1e-4)
    vel = fe.sample_images(perfect, x, c, neg, sent, pref, fe.GuidanceConfig.original(num_steps=8))
    assert float(jnp.max(jnp.abs(vel - z_star))) > 0.1
    with pytest.raises(ValueError, match="space"):
        fe.GuidanceConfig(space="eps")


@pytest.mark.parametrize("scales,branches", [((1.0, 1.0, 4.0), "MP"), ((1.0, 3.0, 3.0), "TP"),
                                             ((1.0, 1.0, 0.0), "M"), ((8.0, 7.0, 8.0), "0TMP")])
def test_weight_zero_branches_are_not_run(inputs, scales, branches):
    """sT = sM = 1 (the demo's 1,1,4): v = vM + 4 (vP - vM), so 0 and T cancel and are not run; the result equals
    the original 4-branch sum (the NumPy loop) and the model sees 2 branches per step, not 4."""
    x, c, neg, sent, pref = inputs
    n = 4
    cfg = fe.GuidanceConfig(num_steps=n, text_scale=scales[0], context_scale=scales[1], preference_scale=scales[2],
                            space="velocity")
    assert cfg.branches == tuple(branches) and cfg.num_branches == len(branches)
    sig = flow.inference_sigmas(n, 3.0)
    ref = x.copy()
    for i in range(n):
        ref = ref + (sig[i + 1] - sig[i]) * np_guided_v(ref, sig[i], c, neg, sent, pref, scales=scales, train=True)
    seen = []

    def counting(lat, txt, t, **kw):
        seen.append(lat.shape[0])
        return J_MODEL(lat, txt, t, **kw)
    got = jax.jit(lambda *a: fe.sample_images(counting, *a, cfg))(*map(jnp.asarray, (x, c, neg, sent, pref)))
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4, atol=1e-4)
    assert seen == [B], seen  # vmapped over the branches: one traced call on [B] rows ...
    txt = fe.branch_texts(*map(jnp.asarray, (neg, sent, pref)), cfg)
    assert txt.shape[0] == len(branches)  # ... of len(branches) stacked inputs
    interval = fe.GuidanceConfig(text_scale=1.0, context_scale=1.0, preference_scale=0.0, interval=(0.2, 0.8))
    assert interval.branches == ("M", "P")  # P has weight 0 but the steps outside the interval use it
