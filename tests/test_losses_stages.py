"""Stage 1/2/3 objectives vs a NumPy transcription of spec §2.3-2.5, on a toy model with fixed draws."""
import numpy as np
import pytest
import jax
import jax.numpy as jnp
from flax import nnx

from dualfashion_jax.diffusion import stages

B, A, H, W, C, K, L, D, V, MASK = 4, 2, 4, 4, 3, 3, 6, 5, 13, 12
TOL = dict(rtol=2e-5, atol=2e-6)  # fp32 JAX vs float64 NumPy

_r = np.random.default_rng(0)
PARAMS = {"w_img": _r.normal(size=C), "p": _r.normal(size=(D, C)) * 0.5, "wt": _r.normal(size=(D, V)),
          "wc": _r.normal(size=(D, V)), "a": _r.normal(size=V), "a2": _r.normal(size=V),
          "emb": _r.normal(size=(V, D)), "r_c": _r.normal(size=(1, 1, 1, C)) * 0.1,
          "r_t": _r.normal(size=(1, 1, 1, C)) * 0.1}


def toy(xp, p):
    """A toy model_fn / t5_fn / offset_fn whose outputs depend on every input they get, for xp = np or jnp."""
    def model_fn(x_img, txt, t, *, heads, text_logits_len):
        tm = txt.mean(1)  # [B, D]
        feat = 0.0 * t if x_img is None else x_img.mean((1, 2, 3))
        v = None
        if "image" in heads:
            v = xp.tanh(x_img * p["w_img"] + (tm @ p["p"])[:, None, None, :] + (t / 1000)[:, None, None, None])
        logits = None
        if "text" in heads:
            n = text_logits_len or txt.shape[1]
            logits = (txt[:, :n] @ p["wt"] + (tm @ p["wc"])[:, None, :] + feat[:, None, None] * p["a"]
                      + (t / 1000)[:, None, None] * p["a2"])
        return v, logits

    def t5_fn(ids, mask):
        h = p["emb"][ids]  # [B, L, D]
        if mask is not None:
            h = h * (0.5 + 0.5 * mask[..., None])
        return h + 0.1 * h.mean(1, keepdims=True)

    def offset_fn(ctx, key=None):  # key: the dropout key (unused by the toy)
        return xp.tanh(ctx + p["r_c"])

    return model_fn, t5_fn, offset_fn


NP_MODEL, NP_T5, NP_OFFSET = toy(np, PARAMS)
J_MODEL, J_T5, J_OFFSET = toy(jnp, {k: jnp.asarray(v, jnp.float32) for k, v in PARAMS.items()})
CFG = stages.LossConfig(mask_id=MASK)


# ---------------------------------------------------------------- NumPy transcription of the original.
def np_sigma(n):
    u = 1 / (1 + np.exp(-n))
    k = np.clip(np.floor(1000 * u).astype(int), 0, 999)
    return (1000 - k) / 1000


def np_caption_loss(td, image, ids, lm, cond, kind="mdlm", norm="batch_len", eps=1e-3):
    n = ids.shape[0]
    t = np.mod(td["t_uniform"] / n + np.arange(n) / n, 1.0) * (1 - eps) + eps
    x_t = np.where((td["mask_uniform"] < (1 - eps) * t[:, None]) & (lm > 0), MASK, ids)
    txt = np.concatenate([NP_T5(x_t, None), *cond], axis=1)
    logits = NP_MODEL(image, txt, np.zeros(n), heads=("text",), text_logits_len=L)[1][:, :L]
    z = logits - logits.max(-1, keepdims=True)
    if kind == "brier":
        pr = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
        tok = (pr ** 2).sum(-1) - 2 * np.take_along_axis(pr, ids[..., None], -1)[..., 0]
        tok = tok * (1 / t)[:, None] * lm
        denom = L if norm == "batch_len" else np.maximum(lm.sum(1), 1)
    else:
        z = z.copy()
        z[:, :, MASK] += -1e6
        lp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        unmasked = x_t != MASK
        lp[unmasked] = -1e6
        lp[unmasked, x_t[unmasked]] = 0.0
        tok = -np.take_along_axis(lp, ids[..., None], -1)[..., 0] * (1 / t)[:, None] * lm
        denom = L if norm == "batch_len" else np.maximum(((x_t == MASK) & (lm > 0)).sum(1), 1)
    return tok.sum(1) / denom


def np_image_loss(x_in, x0, sig, txt):
    v = NP_MODEL(x_in, txt, 1000 * sig, heads=("image",), text_logits_len=None)[0]
    s = sig[:, None, None, None]
    return ((x_in - s * v - x0) ** 2).mean((1, 2, 3))


# ---------------------------------------------------------------- fixtures
def _ids(shape):
    ids = _r.integers(2, V - 1, size=shape)
    lm = (_r.uniform(size=shape) < 0.6).astype(np.int32)
    return ids, lm


@pytest.fixture(scope="module")
def data():
    cap_ids, cap_lm = _ids((B, L))
    aug_ids, aug_lm = _ids((B, A, L))
    pref_mask = np.ones((B, L), np.int32)
    pref_mask[:, -2:] = 0
    batch = {"t2i_latents": _r.normal(size=(B, H, W, C)), "t2i_ids": _ids((B, L))[0],
             "i2t_latents": _r.normal(size=(B, H, W, C)), "caption_ids": cap_ids, "caption_label_mask": cap_lm,
             "target_latents": _r.normal(size=(B, H, W, C)), "context_latents": _r.normal(size=(B, K, H, W, C)),
             "pref_ids": _ids((B, L))[0], "pref_mask": pref_mask, "sentence_ids": _ids((B, L))[0],
             "sentence_mask": pref_mask[::-1].copy(), "aug_ids": aug_ids, "aug_lm": aug_lm}
    draws = {"image": {"sigma_normal": _r.normal(size=B) * 1.5, "noise": _r.normal(size=(B, H, W, C)),
                       "text_drop": np.array([0.05, 0.5, 0.7, 0.3])},
             "text": {"t_uniform": _r.uniform(size=B), "mask_uniform": _r.uniform(size=(B, L))},
             "context_drop": np.array([0.2, 0.9, 0.6, 0.1]), "pref_drop": np.array([0.8, 0.3, 0.6, 0.1]),
             "dropout_key": np.zeros(2, np.uint32)}
    nulls = {"null_emb": _r.normal(size=(L, D)), "null_emb_2x": _r.normal(size=(2 * L, D))}
    return batch, draws, nulls


def jx(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.int32 if np.asarray(a).dtype.kind == "i" else jnp.float32), tree)


# ---------------------------------------------------------------- tests
def test_stage1_reference(data):
    batch, draws, nulls = data
    d = draws["image"]
    sig = np_sigma(d["sigma_normal"])
    x0 = batch["t2i_latents"]
    x_t = (1 - sig[:, None, None, None]) * x0 + sig[:, None, None, None] * d["noise"]
    txt = NP_T5(batch["t2i_ids"], None)
    txt = np.where((d["text_drop"] < 0.1)[:, None, None], nulls["null_emb"][None], txt)
    l_img = np_image_loss(x_t, x0, sig, txt)
    l_txt = np_caption_loss(draws["text"], batch["i2t_latents"], batch["caption_ids"], batch["caption_label_mask"], ())
    ref = l_img.mean() + 0.2 * l_txt.mean()
    loss, m = stages.stage1_loss_given(jx(draws), jx(batch), model_fn=J_MODEL, t5_fn=J_T5,
                                       null_emb=jnp.asarray(nulls["null_emb"], jnp.float32), cfg=CFG)
    np.testing.assert_allclose(float(loss), ref, **TOL)
    np.testing.assert_allclose(float(m["loss_txt"]), l_txt.mean(), **TOL)
    assert float(m["text_drop_frac"]) == 0.25


def test_stage1_real_caption_ratio(data):
    """train_real_cap_ratio: a row's t2i prompt is its structured caption where u < ratio (NumPy reference);
    -1 (the released setting) never reads t2i_real_ids; a missing key is named."""
    import dataclasses

    batch, draws, nulls = data
    batch = dict(batch, t2i_real_ids=_ids((B, L))[0])
    draws = dict(draws, real_caption=np.array([0.1, 0.8, 0.45, 0.6]))
    cfg = dataclasses.replace(CFG, real_caption_ratio=0.5)
    d = draws["image"]
    sig = np_sigma(d["sigma_normal"])
    x0 = batch["t2i_latents"]
    x_t = (1 - sig[:, None, None, None]) * x0 + sig[:, None, None, None] * d["noise"]
    ids = np.where((draws["real_caption"] < 0.5)[:, None], batch["t2i_real_ids"], batch["t2i_ids"])
    txt = np.where((d["text_drop"] < 0.1)[:, None, None], nulls["null_emb"][None], NP_T5(ids, None))
    l_txt = np_caption_loss(draws["text"], batch["i2t_latents"], batch["caption_ids"], batch["caption_label_mask"], ())
    ref = np_image_loss(x_t, x0, sig, txt).mean() + 0.2 * l_txt.mean()
    kw = dict(model_fn=J_MODEL, t5_fn=J_T5, null_emb=jnp.asarray(nulls["null_emb"], jnp.float32))
    loss, _ = stages.stage1_loss_given(jx(draws), jx(batch), cfg=cfg, **kw)
    np.testing.assert_allclose(float(loss), ref, **TOL)
    off, _ = stages.stage1_loss_given(jx(draws), jx(batch), cfg=CFG, **kw)  # -1: the re-captions only
    assert abs(float(off) - float(loss)) > 1e-6
    del batch["t2i_real_ids"]
    with pytest.raises(ValueError, match="t2i_real_ids"):
        stages.stage1_loss_given(jx(draws), jx(batch), cfg=cfg, **kw)
    with pytest.raises(ValueError, match="real_caption_ratio"):
        dataclasses.replace(CFG, real_caption_ratio=1.5)


@pytest.mark.parametrize("mode", ["per_sample", "per_batch_dropped", "per_batch_kept"])
def test_stage2_reference(data, mode):
    batch, draws, nulls = data
    draws = jax.tree.map(np.copy, draws)
    if mode == "per_batch_kept":
        draws["pref_drop"][0] = 0.9
    if mode == "per_batch_dropped":
        draws["pref_drop"][0] = 0.2
    d, lam = draws["image"], 0.1
    sig = np_sigma(d["sigma_normal"])
    s = sig[:, None, None, None]
    x0 = batch["target_latents"]
    ctx = batch["context_latents"].mean(1)
    c = NP_OFFSET(ctx)
    m = (draws["context_drop"] >= 0.5).astype(float)[:, None, None, None]
    x_in = (1 - lam) * ((1 - s) * (x0 + PARAMS["r_t"]) + s * d["noise"]) + lam * m * c
    pref = NP_T5(batch["pref_ids"], batch["pref_mask"])
    sent = NP_T5(batch["sentence_ids"], batch["sentence_mask"])
    null_drop = (d["text_drop"] < 0.1)[:, None, None]
    if mode == "per_sample":
        pref_in = np.where((draws["pref_drop"] < 0.5)[:, None, None], nulls["null_emb"][None], pref)
        txt = np.where(null_drop, nulls["null_emb_2x"][None], np.concatenate([pref_in, sent], 1))
    elif mode == "per_batch_dropped":  # the original: sentence alone, 256 long, null of that length
        txt = np.where(null_drop, nulls["null_emb"][None], sent)
    else:
        txt = np.where(null_drop, nulls["null_emb_2x"][None], np.concatenate([pref, sent], 1))
    l_img = np_image_loss(x_in, x0, sig, txt)
    l_txt = np_caption_loss(draws["text"], ctx, batch["caption_ids"], batch["caption_label_mask"], (pref, sent))
    ref = l_img.mean() + 0.2 * l_txt.mean()
    cfg = stages.LossConfig(mask_id=MASK, preference_dropout_mode="per_sample" if mode == "per_sample" else "per_batch")
    loss, met = stages.stage2_loss_given(jx(draws), jx(batch), model_fn=J_MODEL, t5_fn=J_T5, offset_fn=J_OFFSET,
                                         target_role=jnp.asarray(PARAMS["r_t"], jnp.float32), cfg=cfg,
                                         **jx(nulls))
    np.testing.assert_allclose(float(loss), ref, **TOL)
    np.testing.assert_allclose(float(met["loss_img"]), l_img.mean(), **TOL)
    assert float(met["context_keep_frac"]) == 0.5


@pytest.mark.parametrize("kind,norm", [("brier", "batch_len"), ("mdlm", "masked"), ("brier", "masked")])
def test_stage3_reference(data, kind, norm):
    batch, _, _ = data
    ids, lm = batch["aug_ids"].reshape(B * A, L), batch["aug_lm"].reshape(B * A, L)
    td = {"t_uniform": _r.uniform(size=B * A), "mask_uniform": _r.uniform(size=(B * A, L))}
    pref = np.repeat(NP_T5(batch["pref_ids"], batch["pref_mask"]), A, 0)
    sent = np.repeat(NP_T5(batch["sentence_ids"], batch["sentence_mask"]), A, 0)
    ref = np_caption_loss(td, None, ids, lm, (pref, sent), kind=kind, norm=norm).mean()
    b3 = dict(batch, caption_ids=batch["aug_ids"], caption_label_mask=batch["aug_lm"])
    cfg = stages.LossConfig(mask_id=MASK, stage3_loss=kind, text_loss_norm=norm)
    loss, _ = stages.stage3_loss_given(jx({"text": td}), jx(b3), model_fn=J_MODEL, t5_fn=J_T5, cfg=cfg)
    np.testing.assert_allclose(float(loss), ref, **TOL)


class ToyNet(nnx.Module):
    """A trainable toy with the DualMMDiT call signature (used to check grads through lax.cond)."""
    def __init__(self, rngs):
        self.img = nnx.Linear(D, C, rngs=rngs)
        self.txt = nnx.Linear(D, V, rngs=rngs)
        self.role = nnx.Param(jnp.full((1, 1, 1, C), 0.01))

    def __call__(self, x_img, txt, t, *, heads, text_logits_len):
        v = None if x_img is None else jnp.tanh(x_img + self.img(txt.mean(1))[:, None, None, :] + t[:, None, None, None])
        return v, self.txt(txt[:, :text_logits_len])


def test_stage2_jit_grad_per_batch(data):
    batch, _, nulls = data
    b = jx({k: v for k, v in batch.items() if k in stages.STAGE2_KEYS})
    net = ToyNet(nnx.Rngs(0))
    graph, params = nnx.split(net)
    cfg = stages.LossConfig(mask_id=MASK, preference_dropout_mode="per_batch")

    def loss_of(params, key):
        model = nnx.merge(graph, params)
        return stages.stage2_loss(key, b, model_fn=model, t5_fn=J_T5, offset_fn=J_OFFSET, target_role=model.role[...],
                                  cfg=cfg, **jx(nulls))

    grad_fn = jax.jit(jax.value_and_grad(loss_of, has_aux=True))
    for seed in (0, 1):  # jit == eager, finite grads, gradient reaches r_t and the text head
        (loss, met), g = grad_fn(params, jax.random.key(seed))
        eager, _ = loss_of(params, jax.random.key(seed))
        np.testing.assert_allclose(float(loss), float(eager), rtol=1e-5)
        leaves = jax.tree.leaves(g)
        assert all(np.all(np.isfinite(np.asarray(x))) for x in leaves)
        assert float(np.abs(np.asarray(g["role"][...])).sum()) > 0  # r_t gets gradient (spec §2.4)
        assert float(np.abs(np.asarray(g["txt"]["kernel"][...])).sum()) > 0


def test_bad_inputs_are_named(data):
    batch, draws, nulls = data
    with pytest.raises(ValueError, match="missing key"):
        stages.stage1_loss(jax.random.key(0), {"t2i_latents": jnp.zeros((B, H, W, C))}, model_fn=J_MODEL,
                           t5_fn=J_T5, null_emb=jnp.zeros((L, D)), cfg=CFG)
    with pytest.raises(ValueError, match="null_emb"):
        stages.stage1_loss_given(jx(draws), jx(batch), model_fn=J_MODEL, t5_fn=J_T5, null_emb=jnp.zeros((L + 1, D)),
                                 cfg=CFG)
    with pytest.raises(ValueError, match="text_loss_norm"):
        stages.LossConfig(mask_id=MASK, text_loss_norm="tokens")
    with pytest.raises(ValueError, match="preference_dropout_mode"):
        stages.LossConfig(mask_id=MASK, preference_dropout_mode="sometimes")
    bad = dict(batch, context_latents=batch["context_latents"][:, 0])
    with pytest.raises(ValueError, match="context_latents"):
        stages.stage2_loss_given(jx(draws), jx(bad), model_fn=J_MODEL, t5_fn=J_T5, offset_fn=J_OFFSET,
                                 target_role=jnp.zeros((1, 1, 1, C)), cfg=CFG, **jx(nulls))


def test_micro_batch_average_is_exact(data):
    """Per-example means: the mean of two half-batch losses equals the full-batch loss (same draws, i.i.d. t)."""
    batch, draws, nulls = data
    cfg = stages.LossConfig(mask_id=MASK, antithetic=False, text_loss_norm="masked")
    keys = stages.STAGE1_KEYS
    kw = dict(model_fn=J_MODEL, t5_fn=J_T5, null_emb=jnp.asarray(nulls["null_emb"], jnp.float32), cfg=cfg)
    full, _ = stages.stage1_loss_given(jx(draws), jx({k: batch[k] for k in keys}), **kw)
    halves = [stages.stage1_loss_given(jx(jax.tree.map(lambda a: a[s], draws)),
                                       jx({k: batch[k][s] for k in keys}), **kw)[0]
              for s in (slice(0, B // 2), slice(B // 2, B))]
    np.testing.assert_allclose(float(full), float(np.mean(halves)), rtol=1e-6)
