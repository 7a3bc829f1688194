"""Masked caption sampler vs a straight NumPy transcription of the original ddpm_cache loop (same uniforms)."""
import numpy as np
import pytest
import jax
import jax.numpy as jnp

from dualfashion_jax.samplers import masked_caption as mc

B, L, V, D, MASK, EOS, STEPS = 3, 10, 13, 4, 12, 1, 8
MASK_S = 3  # the hand-made 4-token vocabulary's MASK
_r = np.random.default_rng(0)
P = {"emb": _r.normal(size=(V, D)).astype(np.float32), "wt": (_r.normal(size=(D, V)) * 2).astype(np.float32),
     "wc": _r.normal(size=(D, V)).astype(np.float32), "pos": _r.normal(size=(L, V)).astype(np.float32)}


def toy_logits(xp, p):
    def logits_fn(x):  # depends on every position, so unmasking changes p elsewhere
        h = p["emb"][x]  # [B, L, D]
        return h @ p["wt"] + (h.mean(1) @ p["wc"])[:, None, :] + p["pos"]
    return logits_fn


NP_LOGITS = toy_logits(np, P)
J_LOGITS = toy_logits(jnp, {k: jnp.asarray(v) for k, v in P.items()})
FLAT = {k: v * 0.3 for k, v in P.items()}  # flatter p: tempered and argmax draws differ from p's
NP_FLAT, J_FLAT = toy_logits(np, FLAT), toy_logits(jnp, {k: jnp.asarray(v) for k, v in FLAT.items()})


def np_tempered(p, temperature):
    """p^(1/T) renormalised (T = 0: one-hot argmax), written out in NumPy."""
    if temperature == 0:
        return np.eye(p.shape[-1], dtype=p.dtype)[np.argmax(p, -1)]
    w = np.exp(np.log(np.maximum(p, 1e-30)) / temperature)
    return w / w.sum(-1, keepdims=True)


def np_probs(logits, x):
    """SUBS probabilities: MASK never predicted, unmasked positions copied (one-hot)."""
    lg = logits(x).astype(np.float32)
    lg[:, :, MASK] += np.float32(-1e6)
    lg = lg - lg.max(-1, keepdims=True)
    lp = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
    for b in range(x.shape[0]):
        for l in range(x.shape[1]):
            if x[b, l] != MASK:
                lp[b, l, :] = -1e6
                lp[b, l, x[b, l]] = 0.0
    return np.exp(lp)


def np_confidence(template, label, uniforms, temperature, logits, steps=STEPS, eps=1e-5):
    """order="confidence" written out: each step commits the most probable drawn tokens, leaving
    floor(N_b * s) of row b's N_b label positions masked (ties: the earlier position first)."""
    x = np.where(label == 0, template, MASK)
    n0 = (x == MASK).sum(-1)
    ts = np.linspace(1.0, eps, steps + 1).astype(np.float32)
    dt = np.float32((1 - eps) / steps)
    for i in range(steps):
        p = np_probs(logits, x)
        w = np_tempered(p, temperature)
        w[..., MASK] = 0.0
        tok = np.argmax(w / (1e-10 - np.log(uniforms[i] + 1e-10)), axis=-1)
        s = np.float32(ts[i] - dt)
        for b in range(x.shape[0]):
            masked = np.flatnonzero(x[b] == MASK)
            left = min(int(np.floor(np.float32(n0[b]) * s)), len(masked))
            conf = p[b, masked, tok[b, masked]]
            chosen = masked[np.argsort(-conf, kind="stable")[: len(masked) - left]]
            x[b, chosen] = tok[b, chosen]
    return x


def np_sample(template, attn, label, uniforms, steps=STEPS, eps=1e-5, mask_padding=False, temperature=1.0,
              logits=NP_LOGITS):
    """The original algorithm written out plainly (MDLM _ddpm_caching_update + noise removal), float32; tokens
    drawn from p^(1/T) when temperature != 1 (not the original)."""
    keep = (attn > 0) & (label == 0) if mask_padding else label == 0
    x = np.where(keep, template, MASK)
    timesteps = np.linspace(1.0, eps, steps + 1).astype(np.float32)
    dt = (1 - eps) / steps

    p_x0 = lambda x: np_probs(logits, x)  # noqa: E731

    cache, stats = None, {"cache_hits": 0}
    for i in range(steps):
        t = timesteps[i]
        if cache is None:
            cache = p_x0(x)
        else:
            stats["cache_hits"] += 1
        q = (cache if temperature == 1.0 else np_tempered(cache, temperature)) * (t - (t - dt))
        q[:, :, MASK] = t - dt
        gumbel_norm = 1e-10 - np.log(uniforms[i] + 1e-10)
        x_new = np.argmax(q / gumbel_norm, axis=-1)
        copy = x != MASK
        x_next = np.where(copy, x, x_new)
        if not np.array_equal(x_next, x):
            cache = None
        x = x_next
    stats["left_for_removal"] = int(np.sum(x == MASK))
    return np.where(x == MASK, np.argmax(p_x0(x), -1), x), stats


@pytest.fixture(scope="module")
def case():
    template = _r.integers(2, MASK, size=(B, L))
    attn = np.ones((B, L), np.int32)
    attn[0, 7:] = 0
    attn[1, 5:] = 0
    template[attn == 0] = EOS
    label = np.zeros((B, L), np.int32)
    label[0, 2:5] = 1
    label[1, 1:3] = 1
    label[2, 3:9] = 1
    uniforms = _r.uniform(size=(STEPS, B, L, V)).astype(np.float32)
    return template, attn, label, uniforms


@pytest.mark.parametrize("mask_padding,t_min", [(False, 1e-5), (True, 1e-5), (False, 0.4)])
def test_matches_numpy_transcription_exactly(case, mask_padding, t_min):
    template, attn, label, uniforms = case
    ref, stats = np_sample(template, attn, label, uniforms, eps=t_min, mask_padding=mask_padding)
    # The cases exercise the cached steps and (with a large final t) the final MASK -> argmax p removal.
    assert stats["cache_hits"] > 0 if t_min < 1e-3 else stats["left_for_removal"] > 0
    run = jax.jit(lambda u, cache: mc.sample_caption(J_LOGITS, jnp.asarray(template), jnp.asarray(attn),
                                                     jnp.asarray(label), mask_id=MASK, uniforms=u, steps=STEPS,
                                                     t_min=t_min, mask_padding=mask_padding, use_cache=cache),
                  static_argnums=1)
    for cache in (True, False):
        got = np.asarray(run(jnp.asarray(uniforms), cache))
        np.testing.assert_array_equal(got, ref)  # exact token ids
    assert not np.any(got == MASK)
    keep = (attn > 0) & (label == 0) if mask_padding else label == 0
    np.testing.assert_array_equal(got[keep], template[keep])  # template tokens survive
    if not mask_padding:
        assert np.all(got[attn == 0] == EOS)  # the fix: padding stays EOS


@pytest.mark.parametrize("temperature", [0.0, 0.5])
def test_temperature_matches_numpy(case, temperature):
    """Tempered / argmax token draws: same unmasking race, tokens from p^(1/T); T = 0 gives argmax tokens."""
    template, attn, label, uniforms = case
    ref, _ = np_sample(template, attn, label, uniforms, temperature=temperature, logits=NP_FLAT)
    got = np.asarray(mc.sample_caption(J_FLAT, jnp.asarray(template), jnp.asarray(attn), jnp.asarray(label),
                                       mask_id=MASK, uniforms=jnp.asarray(uniforms), steps=STEPS,
                                       temperature=temperature))
    np.testing.assert_array_equal(got, ref)
    base, _ = np_sample(template, attn, label, uniforms, logits=NP_FLAT)
    assert not np.array_equal(ref, base)  # the knob changes the draws on this case
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        mc.tempered(jnp.ones((2, V)) / V, -1.0)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_confidence_order_matches_numpy(case, temperature):
    template, attn, label, uniforms = case
    ref = np_confidence(template.copy(), label, uniforms, temperature, NP_FLAT)
    got = np.asarray(mc.sample_caption(J_FLAT, jnp.asarray(template), jnp.asarray(attn), jnp.asarray(label),
                                       mask_id=MASK, uniforms=jnp.asarray(uniforms), steps=STEPS,
                                       temperature=temperature, order="confidence"))
    np.testing.assert_array_equal(got, ref)
    assert not np.any(got == MASK)
    np.testing.assert_array_equal(got[label == 0], template[label == 0])
    with pytest.raises(ValueError, match="order must be one of"):
        mc.sample_caption(J_FLAT, jnp.asarray(template), jnp.asarray(attn), jnp.asarray(label), mask_id=MASK,
                          uniforms=jnp.asarray(uniforms), steps=STEPS, order="left_to_right")


def test_confidence_step_commits_the_surest_first():
    """Hand-made probabilities: of 3 masked positions with 2 to leave masked, only the most probable commits."""
    v = 4
    x = jnp.asarray([[MASK_S, MASK_S, 0, MASK_S]])
    p = jnp.asarray([[[0.6, 0.4, 0, 0], [0.1, 0.9, 0, 0], [1, 0, 0, 0], [0.3, 0.3, 0.4, 0]]])  # [1, 4, V]
    e = jnp.ones((1, 4, v))
    got = mc.confidence_step(x, p, p, e, jnp.asarray([3.0]), jnp.float32(0.7), MASK_S)  # floor(2.1) = 2 left
    np.testing.assert_array_equal(np.asarray(got), [[MASK_S, 1, 0, MASK_S]])
    got = mc.confidence_step(x, p, p, e, jnp.asarray([3.0]), jnp.float32(0.0), MASK_S)  # last step: all commit
    np.testing.assert_array_equal(np.asarray(got), [[0, 1, 0, 2]])


def test_guided_logits_known_answer():
    """log p_c + s (log p_c - log p_u) on hand-made logits; scale 0 is p_c itself."""
    lc, lu = jnp.log(jnp.asarray([[[0.5, 0.25, 0.25]]])), jnp.log(jnp.asarray([[[0.25, 0.5, 0.25]]]))
    g = mc.guided_logits_fn(lambda x: lc * 3 + 1.0, lambda x: lu - 2.0, 2.0)(None)  # raw logits: renormalised
    lc3 = np.log(np.asarray([0.5 ** 3, 0.25 ** 3, 0.25 ** 3]) / (0.5 ** 3 + 2 * 0.25 ** 3))
    want = lc3 + 2.0 * (lc3 - np.log([0.25, 0.5, 0.25]))
    np.testing.assert_allclose(np.asarray(g)[0, 0], want, rtol=1e-5, atol=1e-5)
    g0 = mc.guided_logits_fn(lambda x: lc, lambda x: lu, 0.0)(None)
    np.testing.assert_allclose(np.asarray(g0), np.asarray(lc), atol=1e-6)


def test_run_positions_and_guidance_on_chosen_positions():
    """Label runs numbered left to right (a budget template's values in key order); guidance only where chosen."""
    labels = jnp.asarray([[0, 1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 0], [1, 1, 0, 0, 1, 0, 1, 0, 0, 1, 1, 1]])
    np.testing.assert_array_equal(np.asarray(mc.run_positions(labels, [0])),
                                  [[0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(np.asarray(mc.run_positions(labels, [1, 3])),
                                  [[0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 1]])
    r = np.random.default_rng(0)
    c, u = r.standard_normal((2, 12, 5)), r.standard_normal((2, 12, 5))
    where = mc.run_positions(labels, [2])
    g = np.asarray(mc.guided_logits_fn(lambda x: jnp.asarray(c), lambda x: jnp.asarray(u), 1.5, where)(None))
    lc = c - np.log(np.exp(c).sum(-1, keepdims=True))
    lu = u - np.log(np.exp(u).sum(-1, keepdims=True))
    want = np.where(np.asarray(where)[..., None], lc + 1.5 * (lc - lu), lc)
    np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(g, lc + 1.5 * (lc - lu), atol=1e-3)  # positions outside the run are not guided


def test_tempered_known_answers():
    p = jnp.asarray([[0.5, 0.3, 0.2, 0.0]])
    np.testing.assert_allclose(np.asarray(mc.tempered(p, 0.0)), [[1, 0, 0, 0]])
    np.testing.assert_allclose(np.asarray(mc.tempered(p, 0.5)), [[25 / 38, 9 / 38, 4 / 38, 0]], atol=1e-6)
    assert mc.tempered(p, 1.0) is p


def test_prior_and_key_path(case):
    template, attn, label, _ = case
    prior = np.asarray(mc.caption_prior(jnp.asarray(template), jnp.asarray(attn), jnp.asarray(label), MASK))
    np.testing.assert_array_equal(prior == MASK, label > 0)
    orig = np.asarray(mc.caption_prior(jnp.asarray(template), jnp.asarray(attn), jnp.asarray(label), MASK, True))
    np.testing.assert_array_equal(orig == MASK, (label > 0) | (attn == 0))
    args = (J_LOGITS, jnp.asarray(template), jnp.asarray(attn), jnp.asarray(label))
    a = mc.sample_caption(*args, mask_id=MASK, key=jax.random.key(3), steps=STEPS)
    b = mc.sample_caption(*args, mask_id=MASK, key=jax.random.key(3), steps=STEPS)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.any(np.asarray(a) == MASK)
    with pytest.raises(ValueError, match="exactly one of"):
        mc.sample_caption(*args, mask_id=MASK, steps=STEPS)
    with pytest.raises(ValueError, match="uniforms must be"):
        mc.sample_caption(*args, mask_id=MASK, uniforms=jnp.zeros((STEPS, B, L, V - 1)), steps=STEPS)


def test_caption_logits_fn_wiring():
    seen = {}

    def model_fn(x_img, txt, t, *, heads, text_logits_len):
        seen.update(img=x_img, txt=txt, t=t, heads=heads, n=text_logits_len)
        return None, jnp.zeros((txt.shape[0], text_logits_len, V))

    t5_fn = lambda ids, mask: jnp.broadcast_to(ids[..., None].astype(jnp.float32), ids.shape + (D,))  # noqa: E731
    seg = jnp.ones((B, L, D)) * 7
    img = jnp.ones((B, 2, 2, 3))
    fn = mc.caption_logits_fn(model_fn, t5_fn, img, (seg, seg), L)
    out = fn(jnp.full((B, L), 5, jnp.int32))
    assert out.shape == (B, L, V) and seen["heads"] == ("text",) and seen["n"] == L
    assert seen["txt"].shape == (B, 3 * L, D) and float(seen["txt"][0, 0, 0]) == 5 and float(seen["txt"][0, L, 0]) == 7
    np.testing.assert_array_equal(np.asarray(seen["t"]), np.zeros(B))
    assert seen["img"] is img
