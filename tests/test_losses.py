"""Schedules and per-example losses vs hand-written NumPy transcriptions of spec §2 (fixed inputs)."""
import numpy as np
import pytest
import jax
import jax.numpy as jnp

from dualfashion_jax.diffusion import flow, losses, masked_text, conditioning as cond

RTOL = 1e-5  # fp32 JAX vs float64 NumPy references
ATOL = 1e-5
rng = np.random.default_rng(0)


def np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_train_sigma_grid_and_lookup():
    grid = flow.train_sigma_grid()
    np.testing.assert_allclose(grid, (1000 - np.arange(1000)) / 1000, rtol=0, atol=1e-7)
    s = 3.0
    np.testing.assert_allclose(flow.train_sigma_grid(s), s * grid / (1 + (s - 1) * grid), rtol=1e-6)
    u = np.array([0.0, 0.0004, 0.5, 0.9995, 1.0, 0.123456], np.float32)
    k = np.clip(np.floor(1000 * u).astype(int), 0, 999)
    np.testing.assert_allclose(np.asarray(flow.sigmas_from_uniform(jnp.asarray(u))), (1000 - k) / 1000, atol=1e-7)
    with pytest.raises(ValueError, match="shift"):
        flow.train_sigma_grid(0.0)


def test_logit_normal_sampling_statistics():
    sigma, ts = flow.sample_train_sigmas(jax.random.key(0), 20000)
    sigma = np.asarray(sigma)
    np.testing.assert_allclose(np.asarray(ts), 1000 * sigma, rtol=1e-6)
    assert sigma.min() >= 0.001 - 1e-7 and sigma.max() <= 1.0
    # u = sigmoid(N(0,1)) is symmetric about 0.5 with P(u < sigmoid(1)) = Phi(1) = 0.8413.
    assert abs(np.median(sigma) - 0.5) < 0.01
    assert abs(np.mean(sigma > 1 - 1 / (1 + np.exp(-1.0))) - 0.8413) < 0.01


def test_add_noise_matches_formula():
    x0, eps = rng.normal(size=(3, 2, 2, 4)), rng.normal(size=(3, 2, 2, 4))
    sig = np.array([0.001, 0.5, 1.0])
    out = flow.add_noise(jnp.asarray(x0, jnp.float32), jnp.asarray(eps, jnp.float32), jnp.asarray(sig, jnp.float32))
    np.testing.assert_allclose(np.asarray(out), (1 - sig[:, None, None, None]) * x0 + sig[:, None, None, None] * eps,
                               rtol=RTOL, atol=ATOL)


def test_log_linear_schedule_weight_is_one_over_t():
    t = jnp.asarray([1e-3, 0.01, 0.3, 0.77, 1.0], jnp.float32)
    np.testing.assert_allclose(np.asarray(masked_text.elbo_weight(t)), 1 / np.asarray(t), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(masked_text.move_chance(t)), (1 - 1e-3) * np.asarray(t), rtol=1e-5)
    sig = -np.log(1 - (1 - 1e-3) * np.asarray(t, np.float64))
    np.testing.assert_allclose(np.asarray(masked_text.log_linear_sigma(t)), sig, rtol=1e-5)


@pytest.mark.parametrize("antithetic", [True, False])
def test_t_from_uniform(antithetic):
    u = rng.uniform(size=7).astype(np.float32)
    n, eps = 7, 1e-3
    ref = (np.mod(u / n + np.arange(n) / n, 1.0) if antithetic else u) * (1 - eps) + eps
    got = masked_text.t_from_uniform(jnp.asarray(u), antithetic=antithetic)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-6)
    if antithetic:  # one stratum per example
        strata = np.floor((np.asarray(got) - eps) / (1 - eps) * n)
        assert sorted(strata.tolist()) == list(range(n))


def test_masking_only_on_labels():
    b, l, mask_id = 3, 9, 10
    x0 = rng.integers(0, 10, size=(b, l))
    lm = (rng.uniform(size=(b, l)) < 0.6).astype(np.int32)
    u = rng.uniform(size=(b, l)).astype(np.float32)
    t = np.array([0.2, 0.6, 1.0], np.float32)
    got = np.asarray(masked_text.mask_from_uniform(jnp.asarray(u), jnp.asarray(x0), jnp.asarray(lm),
                                                   jnp.asarray(t), mask_id))
    ref = np.where((u < (1 - 1e-3) * t[:, None]) & (lm > 0), mask_id, x0)
    np.testing.assert_array_equal(got, ref)
    # Statistics: masked fraction of label positions = (1-eps) t.
    big = masked_text.mask_tokens(jax.random.key(1), jnp.zeros((2, 20000), jnp.int32), jnp.ones((2, 20000)),
                                  jnp.asarray([0.25, 0.75]), mask_id)
    np.testing.assert_allclose(np.mean(np.asarray(big) == mask_id, axis=1), [0.25 * 0.999, 0.75 * 0.999], atol=0.015)


def np_subs(logits, x_t, mask_id):
    lg = logits.astype(np.float64).copy()
    lg[:, :, mask_id] += -1e6
    lp = np_log_softmax(lg)
    b, l, v = lp.shape
    for i in range(b):
        for j in range(l):
            if x_t[i, j] != mask_id:
                lp[i, j, :] = -1e6
                lp[i, j, x_t[i, j]] = 0.0
    return lp


def _text_case(b=4, l=8, v=11, mask_id=7):
    logits = rng.normal(size=(b, l, v)).astype(np.float32) * 3
    x0 = rng.integers(0, v, size=(b, l))
    x0[x0 == mask_id] = 0
    lm = (rng.uniform(size=(b, l)) < 0.7).astype(np.int32)
    lm[:, 0] = 1
    x_t = np.where((rng.uniform(size=(b, l)) < 0.5) & (lm > 0), mask_id, x0)
    x_t[:, 0] = mask_id
    t = rng.uniform(0.05, 1.0, size=b).astype(np.float32)
    return logits, x0, lm, x_t, t, mask_id


def test_subs_log_probs_formula():
    logits, x0, lm, x_t, t, mask_id = _text_case()
    got = np.asarray(masked_text.subs_log_probs(jnp.asarray(logits), jnp.asarray(x_t), mask_id))
    np.testing.assert_allclose(got, np_subs(logits, x_t, mask_id), rtol=RTOL, atol=1e-4)
    masked = x_t == mask_id
    assert np.all(got[masked][:, mask_id] < -1e5)  # MASK is never predicted
    np.testing.assert_allclose(np.exp(got).sum(-1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="mask_id 11 is outside"):
        masked_text.subs_log_probs(jnp.asarray(logits), jnp.asarray(x_t), 11)


@pytest.mark.parametrize("norm", ["batch_len", "masked"])
def test_mdlm_loss_reference(norm):
    logits, x0, lm, x_t, t, mask_id = _text_case()
    lp = np_subs(logits, x_t, mask_id)
    b, l = x0.shape
    nll = -np.take_along_axis(lp, x0[..., None], -1)[..., 0]
    eps = 1e-3
    sig = -np.log(1 - (1 - eps) * t)
    w = ((1 - eps) / (1 - (1 - eps) * t)) / np.expm1(sig)
    tok = nll * w[:, None] * lm
    denom = l if norm == "batch_len" else np.maximum(((x_t == mask_id) & (lm > 0)).sum(1), 1)
    ref = tok.sum(1) / denom
    got = losses.mdlm_loss(jnp.asarray(logits), jnp.asarray(x_t), jnp.asarray(x0), jnp.asarray(lm),
                           jnp.asarray(t), mask_id, norm=norm)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4)
    if norm == "batch_len":  # the original's batch normalisation: sum / (B * L)
        np.testing.assert_allclose(float(jnp.mean(got)), tok.sum() / (b * l), rtol=1e-4)


@pytest.mark.parametrize("norm", ["batch_len", "masked"])
def test_brier_loss_reference(norm):
    logits, x0, lm, _, t, _ = _text_case()
    z = logits.astype(np.float64)
    p = np.exp(np_log_softmax(z))
    onehot = np.eye(z.shape[-1])[x0]
    tok = ((p - onehot) ** 2).sum(-1) - 1.0  # == sum p^2 - 2 p_x0
    tok = tok * (1 / t)[:, None] * lm * lm
    denom = z.shape[1] if norm == "batch_len" else np.maximum(lm.sum(1), 1)
    got = losses.brier_loss(jnp.asarray(logits), jnp.asarray(x0), jnp.asarray(lm), jnp.asarray(t), norm=norm)
    np.testing.assert_allclose(np.asarray(got), tok.sum(1) / denom, rtol=1e-4)


def test_flow_x0_loss_reference_and_velocity_form():
    x0, eps, f = (rng.normal(size=(3, 4, 4, 2)) for _ in range(3))
    sig = np.array([0.1, 0.5, 0.9])
    s = sig[:, None, None, None]
    x_t = (1 - s) * x0 + s * eps
    ref = ((x_t - s * f - x0) ** 2).mean((1, 2, 3))
    j = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    got = np.asarray(losses.flow_x0_loss(j(f), j(x_t), j(x0), j(sig)))
    np.testing.assert_allclose(got, ref, rtol=1e-4)
    np.testing.assert_allclose(got, (s ** 2 * (f - (eps - x0)) ** 2).mean((1, 2, 3)), rtol=1e-4)  # spec §2.1
    with pytest.raises(ValueError, match="must all be"):
        losses.flow_x0_loss(j(f)[:, :2], j(x_t), j(x0), j(sig))


def test_text_dropout_and_stage2_input():
    txt = jnp.asarray(rng.normal(size=(4, 5, 3)), jnp.float32)
    null = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
    u = jnp.asarray([0.05, 0.5, 0.09, 0.11])
    out, dropped = cond.drop_text(u, txt, null, 0.1)
    np.testing.assert_array_equal(np.asarray(dropped), [True, False, True, False])
    np.testing.assert_array_equal(np.asarray(out[0]), np.asarray(null))
    np.testing.assert_array_equal(np.asarray(out[1]), np.asarray(txt[1]))
    with pytest.raises(ValueError, match="null_emb"):
        cond.drop_text(u, txt, null[:4], 0.1)
    x0, eps, c = (rng.normal(size=(2, 3, 3, 4)) for _ in range(3))
    r_t = rng.normal(size=(1, 1, 1, 4))
    sig, m, lam = np.array([0.3, 0.8]), np.array([1.0, 0.0]), 0.1
    s, mm = sig[:, None, None, None], m[:, None, None, None]
    ref = (1 - lam) * ((1 - s) * (x0 + r_t) + s * eps) + lam * mm * c
    j = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    got = cond.stage2_image_input(j(x0), j(eps), j(sig), j(r_t), j(c), j(m), lam)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(cond.context_keep(jnp.asarray([0.2, 0.7]), 0.5)), [0.0, 1.0])


def test_pick_equals_the_gather_and_its_gradient_has_no_scatter():
    """`masked_text.pick` (one-hot select-and-sum) == take_along_axis, value and gradient, without a scatter."""
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.standard_normal((3, 5, 37)), jnp.float32)
    ids = jnp.asarray(rng.integers(0, 37, (3, 5)), jnp.int32)

    def gather(x):
        return jnp.take_along_axis(jax.nn.log_softmax(x), ids[..., None], -1)[..., 0]

    def picked(x):
        return masked_text.pick(jax.nn.log_softmax(x), ids)

    np.testing.assert_array_equal(np.asarray(picked(logits)), np.asarray(gather(logits)))
    g_pick = jax.grad(lambda x: picked(x).sum())(logits)
    g_gather = jax.grad(lambda x: gather(x).sum())(logits)
    np.testing.assert_allclose(np.asarray(g_pick), np.asarray(g_gather), rtol=0, atol=1e-6)
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda x: picked(x).sum()))(logits))
    assert "scatter" not in jaxpr and "scatter-add" in str(jax.make_jaxpr(jax.grad(lambda x: gather(x).sum()))(logits))
