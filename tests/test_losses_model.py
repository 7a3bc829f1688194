"""Interface check: the stage objectives and both samplers run with the real tiny DualMMDiT + T5 (jit, grad)."""
import numpy as np
import pytest
import jax
import jax.numpy as jnp
from flax import nnx

from dualfashion_jax.diffusion import stages
from dualfashion_jax.diffusion.pure_fn import as_pure
from dualfashion_jax.models import mmdit, mmdit_config, t5
from dualfashion_jax.samplers import flow_euler, masked_caption

B, K, L = 2, 3, 8


@pytest.fixture(scope="module")
def setup():
    cfg = mmdit_config.get("tiny")
    model = mmdit.DualMMDiT(cfg, rngs=nnx.Rngs(0))
    enc = t5.T5Encoder(t5.get_config("tiny", d_model=cfg.joint_attention_dim), rngs=nnx.Rngs(1))
    mask_id = cfg.vocab_size - 1
    r = np.random.default_rng(0)
    h, w = cfg.latent_hw
    ids = lambda: jnp.asarray(r.integers(2, mask_id, size=(B, L)), jnp.int32)  # noqa: E731
    lm = jnp.asarray(np.tile((np.arange(L) % 3 == 1).astype(np.int32), (B, 1)))
    batch = {"target_latents": jnp.asarray(r.normal(size=(B, h, w, cfg.in_channels)), jnp.float32),
             "context_latents": jnp.asarray(r.normal(size=(B, K, h, w, cfg.in_channels)), jnp.float32),
             "caption_ids": ids(), "caption_label_mask": lm, "pref_ids": ids(), "pref_mask": jnp.ones((B, L), jnp.int32),
             "sentence_ids": ids(), "sentence_mask": jnp.ones((B, L), jnp.int32)}
    d = cfg.joint_attention_dim  # any precomputed [L, D] / [2L, D] arrays serve as the null prompts here
    nulls = {"null_emb": jnp.asarray(r.normal(size=(L, d)), jnp.float32),
             "null_emb_2x": jnp.asarray(r.normal(size=(2 * L, d)), jnp.float32)}
    return cfg, model, enc, mask_id, batch, nulls


@pytest.mark.slow
def test_stage_losses_and_samplers_with_real_modules(setup):
    cfg, model, enc, mask_id, batch, nulls = setup
    loss_cfg = stages.LossConfig(mask_id=mask_id, preference_dropout_mode="per_batch")
    graph, params, rest = nnx.split(model, nnx.Param, ...)
    t5_graph, t5_state = nnx.split(enc)

    def loss_of(params, rest, t5_state, key):  # the training step's functional pattern (frozen T5 merged inside)
        m = nnx.merge(graph, params, rest)
        enc = nnx.merge(t5_graph, t5_state)  # not differentiated: stages wraps it with as_pure
        l2, met = stages.stage2_loss(key, batch, model_fn=m, t5_fn=enc,
                                     offset_fn=lambda c, k: m.stage2.offset(c, deterministic=False, rngs=k),
                                     target_role=m.stage2.target_role[...], cfg=loss_cfg, **nulls)
        return l2, met

    (loss, met), grads = jax.jit(jax.value_and_grad(loss_of, has_aux=True))(params, rest, t5_state, jax.random.key(0))
    assert np.isfinite(float(loss)) and 0 < float(met["loss_txt"]) and 0 < float(met["loss_img"])
    leaves = jax.tree.leaves(grads)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in leaves)
    assert float(np.abs(np.asarray(grads["stage2"]["target_role"][...])).sum()) > 0
    for head in ("image_proj_out", "text_proj_out", "context_embedder"):  # both branches reach the trunk/heads
        assert float(np.abs(np.asarray(grads[head]["kernel"][...])).sum()) > 0, head
    assert float(np.abs(np.asarray(grads["stage2"]["matching_mlp"]["output_layer"]["kernel"][...])).sum()) > 0

    # Image sampler (2 steps, 4-way guidance) and caption sampler (3 steps) on the same modules.
    h, w = cfg.latent_hw
    x0 = flow_euler.initial_noise(0, jnp.arange(B), 7, 0, (B, h, w, cfg.in_channels))
    ctx = batch["context_latents"].mean(1)
    embed = jax.jit(as_pure(enc))
    emb = lambda k: embed(batch[f"{k}_ids"], batch[f"{k}_mask"])  # noqa: E731
    img = flow_euler.sample_images(model, x0, ctx * 0.1, emb("pref"), emb("sentence"), emb("pref"),
                                   flow_euler.GuidanceConfig(num_steps=2))
    assert img.shape == x0.shape and np.all(np.isfinite(np.asarray(img)))
    fn = masked_caption.caption_logits_fn(model, enc, ctx, (emb("pref"), emb("sentence")), L)
    cap = masked_caption.sample_caption(fn, batch["caption_ids"], jnp.ones((B, L), jnp.int32),
                                        batch["caption_label_mask"], mask_id=mask_id, key=jax.random.key(1), steps=3)
    cap = np.asarray(cap)
    keep = np.asarray(batch["caption_label_mask"]) == 0
    assert not np.any(cap == mask_id) and np.array_equal(cap[keep], np.asarray(batch["caption_ids"])[keep])
