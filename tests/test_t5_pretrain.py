"""The T5 decoder, span-corruption pretraining, and the pretrained encoder saved / loaded like a converted T5."""
import pathlib

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest
from flax import nnx

from dualfashion_jax.conversion import t5 as conv_t5
from dualfashion_jax.modeling import frozen
from dualfashion_jax.models import t5, t5_decoder
from dualfashion_jax.training import t5_pretrain as tp

CFG = t5.get_config("tiny")  # vocab 128: <extra_id_0> = 127


def test_causal_buckets_follow_t5_unidirectional_scheme():
    # transformers' _relative_position_bucket(bidirectional=False, num_buckets=32, max_distance=128): exact below
    # 16 steps back, then 16 + int(log(n / 16) / log(8) * 16), capped at 31; keys ahead of the query -> bucket 0
    b = np.asarray(t5_decoder.causal_position_buckets(600, 600, 32, 128))
    assert [int(b[n, 0]) for n in (0, 1, 15, 16, 20, 100, 127, 500)] == [0, 1, 15, 16, 17, 30, 31, 31]
    assert (b[0, 1:] == 0).all()


@pytest.fixture(scope="module")
def model():
    return t5_decoder.T5EncoderDecoder(CFG, rngs=nnx.Rngs(params=jax.random.key(0)))


def test_decoder_is_causal_and_ignores_padded_inputs(model):
    rng = np.random.default_rng(0)
    inputs = jnp.asarray(rng.integers(3, 120, (2, 12)), jnp.int32)
    mask = jnp.asarray(np.arange(12)[None] < np.array([[12], [7]]), jnp.int32)  # row 1: 5 padded positions
    dec = jnp.asarray(rng.integers(3, 120, (2, 8)), jnp.int32)
    base = model(inputs, mask, dec)  # [B, T, V]
    assert base.shape == (2, 8, CFG.vocab_size) and base.dtype == jnp.float32
    later = model(inputs, mask, dec.at[:, 5].set(7))
    np.testing.assert_allclose(later[:, :5], base[:, :5], atol=1e-6)  # positions before 5 never see token 5
    assert np.abs(np.asarray(later[:, 5:] - base[:, 5:])).max() > 1e-3
    padded = model(inputs.at[1, 9].set(5), mask, dec)
    np.testing.assert_allclose(padded[1], base[1], atol=1e-6)  # row 1's position 9 is padding


def _sequences(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Learnable toy texts: ascending runs from a random start (each token predicts its neighbours)."""
    return [np.arange(s, s + int(rng.integers(8, 20))) % 100 + 3 for s in rng.integers(0, 100, n)]


@pytest.fixture(scope="module")
def trained():
    seqs = _sequences(200, np.random.default_rng(0))
    pcfg = tp.PretrainConfig(steps=120, batch_size=32, lr=1e-2, warmup_steps=10, input_length=24, target_length=8)
    return tp.pretrain(seqs, CFG, pcfg, tp.Special(first_sentinel=127, eos_id=1), key=jax.random.key(1),
                       progress=False)


def test_pretraining_lowers_the_span_loss(trained):
    _, losses = trained
    assert len(losses) == 120 and np.isfinite(losses).all()
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < 0.5 * first, (first, last)  # ~ln(128) = 4.85 at init


def test_pretrain_rejects_ids_beyond_the_vocabulary():
    with pytest.raises(ValueError, match="vocab_size 128"):
        tp.pretrain([np.arange(3, 10)], CFG, tp.PretrainConfig(steps=2, warmup_steps=0),
                    tp.Special(first_sentinel=200, eos_id=1), key=jax.random.key(0), progress=False)
    with pytest.raises(ValueError, match="warmup_steps"):
        tp.PretrainConfig(steps=10, warmup_steps=10)


def test_saved_encoder_loads_through_the_converted_t5_path(trained, tmp_path: pathlib.Path):
    enc, _ = trained
    out = tp.save_encoder(enc, tmp_path / "t5", extra={"steps": 120})
    ids = jnp.asarray(np.random.default_rng(1).integers(3, 127, (3, 16)), jnp.int32)
    mask = jnp.ones_like(ids).at[2, 10:].set(0)
    want = np.asarray(enc(ids, mask))
    np.testing.assert_array_equal(np.asarray(conv_t5.load(out)(ids, mask)), want)
    # the training / generation path: config.t5.checkpoint -> modeling.frozen
    block = mlc.ConfigDict(dict(preset="tiny", checkpoint=str(out), dtype="float32", param_dtype="float32", seed=0,
                                overrides={}))
    mod, source = frozen.load_frozen("t5", mlc.ConfigDict(dict(t5=block)), tmp_path)
    assert source == str(out)
    np.testing.assert_array_equal(np.asarray(mod(ids, mask)), want)
    spec, cfg = frozen.frozen_spec("t5", block, seed=0)
    assert cfg.vocab_size == CFG.vocab_size and spec.params is not None and spec.source == str(out)
    with pytest.raises(FileExistsError, match="already exists"):
        tp.save_encoder(enc, out)  # never overwrites


def test_mlm_view_masks_tokens_but_never_eos_or_padding():
    rng = np.random.default_rng(0)
    seqs = [np.arange(3, 3 + n) for n in rng.integers(3, 30, 64)]
    v = tp.mlm_view(seqs, rng, mask_id=127, eos_id=1, pad_id=0, length=24)
    assert all(v[k].shape == (64, 24) for k in ("full", "input_mask_full", "mlm_inputs", "mlm_mask"))
    m = v["mlm_mask"].astype(bool)
    assert (v["mlm_inputs"][m] == 127).all() and (v["mlm_inputs"][~m] == v["full"][~m]).all()
    assert not m[v["full"] == 1].any() and not m[v["input_mask_full"] == 0].any()
    rates = m.sum(1) / (v["input_mask_full"].sum(1) - 1)
    assert rates.min() < 0.2 and rates.max() > 0.8  # a per-text rate ~ U(0, 1), as the caption diffusion's


@pytest.mark.slow
def test_pretrained_demo_encoder_tells_masked_caption_slots_apart(tmp_path: pathlib.Path, xla_optimized):
    # the demo's setting on demo-like texts: a random small T5 maps every MASK of the caption template to the same
    # vector (cosine 0.9992, docs/demo.md); 300 pretraining steps move them apart (here 0.990, in demo runs
    # 0.54-0.80; span corruption alone: 0.9998): 1 - cosine at least 5x the random init's
    from dualfashion_jax import demo
    from dualfashion_jax.data.synthetic import attributes as A, captions as C
    from dualfashion_jax.text import tokenizer as tk

    rng = np.random.default_rng(0)
    texts = []
    for _ in range(600):
        cat, col, mat, feat, sty = (int(rng.integers(len(v))) for v in (A.CATEGORIES, A.COLORS, A.MATERIALS,
                                                                          A.FEATURES, A.STYLES))
        texts += [C.caption_json(C.elements(col, mat, feat, sty)), C.re_caption(cat, col, mat, feat, sty)]
    tok = tk.build_test_tokenizer(texts, tmp_path / "tok", vocab_size=400, max_length=24, model_type="bpe",
                                  user_symbols=demo.fixed_phrases(texts))
    cfg = t5.get_config("small_demo", vocab_size=tok.vocab_size)
    summary = tp.train_and_save(texts, tok, cfg, tp.PretrainConfig(steps=300), tmp_path / "t5", progress=False)
    random_cos = tp.masked_slot_cosine(t5.T5Encoder(cfg, rngs=nnx.Rngs(0)), tok)
    assert random_cos > 0.99, random_cos
    assert 1 - summary["masked_slot_cosine"] > 5 * (1 - random_cos), (summary, random_cos)
    assert summary["loss_last10"] < 0.5 * summary["loss_first10"], summary
    enc = conv_t5.load(tmp_path / "t5")
    assert tp.masked_slot_cosine(enc, tok) == pytest.approx(summary["masked_slot_cosine"], abs=1e-6)
