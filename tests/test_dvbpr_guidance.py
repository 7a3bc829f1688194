"""DVBPR preference guidance (issue #17): the score gradient through the VAE decoder against central finite
differences, eta = 0 is the unguided sampler exactly, a positive eta raises the user's score, start_step bounds."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dualfashion_jax.models import pixel_ae
from dualfashion_jax.models.dvbpr import DVBPR, DVBPRConfig
from dualfashion_jax.samplers import score_guidance as sg
from dualfashion_jax.samplers.flow_euler import GuidanceConfig, sample_images


@pytest.fixture(scope="module")
def image_setup():
    # the demo's VAE kind (a conv AutoencoderKL's backward pass takes minutes to compile on a shared CPU)
    ae = pixel_ae.PixelAutoencoder(pixel_ae.PixelAEConfig(factor=2, scaling_factor=1.3, shift_factor=0.1))
    model = DVBPR(DVBPRConfig(num_users=3, input_kind="image", in_channels=3, input_size=16, channels=(4, 8),
                              hidden=8, embed_dim=4), rngs=nnx.Rngs(1))
    return ae, _unit_users(model)


def _unit_users(model):
    """theta ~ N(0, 1) (the init's 0.01 makes scores ~1e-4, below fp32 finite-difference resolution)."""
    model.theta[...] = jax.random.normal(jax.random.key(9), model.theta[...].shape)
    return model


def _fd_check(score, x, n_dirs=3, eps=1e-3):  # ReLU kinks bias larger steps
    g = np.asarray(jax.jit(lambda x: sg.score_grad(score, x))(x), np.float64)
    total = jax.jit(lambda x: jnp.sum(score(x)))
    r = np.random.default_rng(0)
    for _ in range(n_dirs):
        d = r.standard_normal(x.shape).astype(np.float32)
        fd = (float(total(x + eps * d)) - float(total(x - eps * d))) / (2 * eps)
        an = float((g * d).sum())
        assert abs(fd - an) <= 2e-2 * max(abs(an), 1e-3), (fd, an)


def test_gradient_through_the_vae_decoder_matches_finite_differences(image_setup):
    ae, model = image_setup
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 16))  # model-space latents of 32 px images
    score = sg.dvbpr_score_fn(model, jnp.asarray([0, 2]), ae)  # decoded 32 px, resized to the DVBPR's 16
    assert score(x).shape == (2,)
    _fd_check(score, x)


def test_gradient_of_a_latent_dvbpr_matches_finite_differences():
    model = DVBPR(DVBPRConfig(num_users=2, input_kind="latent", in_channels=4, input_size=8, channels=(8,),
                              hidden=8, embed_dim=4), rngs=nnx.Rngs(2))
    x = jax.random.normal(jax.random.key(3), (3, 8, 8, 4))
    _fd_check(sg.dvbpr_score_fn(_unit_users(model), jnp.asarray([1, 0, 1])), x)


def test_image_model_needs_a_vae(image_setup):
    _, model = image_setup
    with pytest.raises(ValueError, match="pass the VAE"):
        sg.dvbpr_score_fn(model, jnp.asarray([0]))
    with pytest.raises(ValueError, match="eta must be >= 0"):
        sg.ScoreGuidanceConfig(eta=-1.0)


def _toy_sampler_inputs():
    b, l, d = 2, 3, 4
    x = jax.random.normal(jax.random.key(5), (b, 8, 8, 4))
    emb = jnp.zeros((b, l, d))

    def model_fn(lat, txt, t, *, heads, text_logits_len):  # a fixed linear "denoiser": F = 0.5 x
        return 0.5 * lat, None

    return model_fn, x, emb


def test_eta_zero_is_the_plain_sampler_and_eta_raises_the_score():
    model = DVBPR(DVBPRConfig(num_users=2, input_kind="latent", in_channels=4, input_size=8, channels=(8,),
                              hidden=8, embed_dim=4), rngs=nnx.Rngs(4))
    model_fn, x, emb = _toy_sampler_inputs()
    cfg = GuidanceConfig(mode="none", num_steps=6)
    uids = jnp.asarray([0, 1])
    score = sg.dvbpr_score_fn(model, uids)
    run = lambda hook, start=0: sample_images(model_fn, x, None, emb, emb, emb, cfg,  # noqa: E731
                                              velocity_hook=hook, start_step=start)
    plain = run(None)
    zero = run(sg.guide(score, sg.ScoreGuidanceConfig(eta=0.0)))
    np.testing.assert_allclose(np.asarray(zero), np.asarray(plain), rtol=0, atol=1e-6)
    guided = jax.jit(lambda: run(sg.guide(score, sg.ScoreGuidanceConfig(eta=1.0))))()
    assert np.all(np.asarray(score(guided)) > np.asarray(score(plain)))
    part = run(None, start=3)
    assert part.shape == plain.shape and not np.allclose(np.asarray(part), np.asarray(plain))
    with pytest.raises(ValueError, match="start_step must be in"):
        run(None, start=6)
