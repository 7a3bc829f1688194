"""The demo's stand-in VAE (space-to-depth pixel autoencoder): exact round trip, the AutoencoderKL interface,
shift/scale fitting, and loading through the same loaders real converted VAEs use."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dualfashion_jax.conversion import vae as vae_conv
from dualfashion_jax.models import pixel_ae, vae
from dualfashion_jax.modeling import latents
from dualfashion_jax.sharding import axes


@pytest.fixture(scope="module")
def ae():
    return pixel_ae.PixelAutoencoder(pixel_ae.PixelAEConfig(seed=3))


@pytest.fixture(scope="module")
def images():
    return jax.random.uniform(jax.random.key(0), (3, 32, 32, 3), minval=-1.0, maxval=1.0)  # [B, H, W, 3]


def test_round_trip_and_interface(ae, images):
    post = ae.encode(images)
    assert isinstance(post, vae.DiagonalGaussian)
    assert post.mean.shape == (3, 16, 16, 16) and post.mean.dtype == jnp.float32  # [B, S/2, S/2, 16]
    rec = ae.decode(post.mode())
    np.testing.assert_allclose(np.asarray(rec), np.asarray(images), atol=1e-5)  # tolerance: fp32 rounding
    z = post.sample(jax.random.key(1))  # near point mass (logvar -30): the sample decodes to the input too
    np.testing.assert_allclose(np.asarray(ae.decode(z)), np.asarray(images), atol=1e-5)
    np.testing.assert_allclose(np.asarray(ae(images)), np.asarray(images), atol=1e-5)
    assert ae.cfg.downsample_factor == 2 and ae.cfg.latent_channels == 16
    w = np.asarray(ae.proj[...])
    np.testing.assert_allclose(w @ w.T, np.eye(12), atol=1e-6)  # orthonormal rows: W W^T = I
    assert ae.proj.get_metadata()["out_sharding"] == (axes.CONV_IN, axes.CONV_OUT)


def test_model_space_helpers_use_shift_and_scale(images):
    u8 = np.asarray(jnp.round((images + 1) * 127.5), np.uint8)
    cfg = pixel_ae.fit_scaling(pixel_ae.PixelAEConfig(), u8)
    z = np.asarray(latents.encode_images(pixel_ae.PixelAutoencoder(cfg), u8, sample=False))  # model space
    assert abs(z.mean()) < 1e-4 and abs(z.std() - 1.0) < 1e-4
    back = np.asarray(vae.decode_latents(pixel_ae.PixelAutoencoder(cfg), jnp.asarray(z)))  # [0, 1] images
    np.testing.assert_allclose(back * 255.0, u8.astype(np.float32), atol=1e-2)


def test_saved_stand_in_loads_through_the_vae_loader(ae, images, tmp_path):
    from dualfashion_jax.data import encode_latents
    from dualfashion_jax.modeling.vae import load_vae

    pixel_ae.save(ae, tmp_path / "vae")
    assert encode_latents.load_vae is load_vae  # encode-latents, training, generation and the demo share it
    loaded = load_vae(tmp_path / "vae")
    assert isinstance(loaded, pixel_ae.PixelAutoencoder) and loaded.cfg == ae.cfg
    np.testing.assert_array_equal(np.asarray(loaded.encode(images).mean), np.asarray(ae.encode(images).mean))


def test_bad_inputs_name_the_problem(ae, images, tmp_path):
    with pytest.raises(ValueError, match="looks NCHW"):
        ae.encode(jnp.transpose(images, (0, 3, 1, 2)))
    with pytest.raises(ValueError, match="multiples of 2"):
        ae.encode(images[:, :31, :31])
    with pytest.raises(ValueError, match="expected NHWC"):
        ae.decode(jnp.zeros((1, 4, 4, 12)))
    with pytest.raises(ValueError, match="not invertible"):
        pixel_ae.PixelAEConfig(factor=4)
    with pytest.raises(ValueError, match="unknown PixelAEConfig fields"):
        pixel_ae.PixelAEConfig.from_dict({"blocks": 3}, source="x.json")
    with pytest.raises(ValueError, match="constant"):
        pixel_ae.fit_scaling(pixel_ae.PixelAEConfig(), np.full((2, 32, 32, 3), 255, np.uint8))
    pixel_ae.save(pixel_ae.PixelAutoencoder(dataclasses.replace(ae.cfg, seed=4)), tmp_path / "v")
    cfg_file = tmp_path / "v" / "config.json"
    cfg_file.write_text(cfg_file.read_text().replace('"seed": 4', '"seed": 5'))
    with pytest.raises(ValueError, match="differs from the projection of seed 5"):
        pixel_ae.load(tmp_path / "v")


def _garments(n: int = 48, size: int = 32) -> np.ndarray:
    """Real demo renders (the synthetic dataset's garments) as uint8 [n, S, S, 3]."""
    from dualfashion_jax.data.synthetic import render
    from dualfashion_jax.data.synthetic import attributes as A

    rng = np.random.default_rng(0)
    return np.stack([render.render_item(i % len(A.CATEGORIES), (3 * i) % len(A.COLORS), (5 * i) % len(A.MATERIALS),
                                        0, render.Jitter.sample(rng), size) for i in range(n)])


@pytest.mark.parametrize("factor,channels", [(4, 16), (8, 48)])
def test_pca_basis_is_the_best_rank_c_linear_autoencoder(tmp_path, factor, channels):
    """factor 4 (48 pixel numbers per latent pixel -> 16) and factor 8 (192 -> 48, the demo's): whitened principal
    directions (orthogonal columns, unit variance per channel); reconstructions keep the oracle's attributes; the
    fitted basis saves/loads through the VAE loader and is validated there."""
    from dualfashion_jax.modeling.vae import load_vae
    from dualfashion_jax.data import oracle

    u8 = _garments()
    d, h = factor * factor * 3, 32 // factor
    cfg = pixel_ae.PixelAEConfig(factor=factor, basis="pca", latent_channels=channels)
    ae = pixel_ae.fit(cfg, u8)
    w = np.asarray(ae.proj[...])
    assert w.shape == (d, channels)
    gram = w.T @ w
    np.testing.assert_allclose(gram, np.diag(np.diag(gram)), atol=1e-4 * gram.max())  # orthogonal columns
    x = u8.astype(np.float64) / 127.5 - 1.0
    blocks = np.asarray(pixel_ae.space_to_depth(jnp.asarray(x), factor)).reshape(-1, d)  # [N*h*h, d]
    np.testing.assert_allclose((blocks @ w).std(0), 1.0, rtol=1e-3)  # whitened: unit variance per channel
    v = w / np.linalg.norm(w, axis=0)
    kept = np.sum((blocks @ v) ** 2) / np.sum(blocks ** 2)
    eig = np.linalg.eigvalsh(blocks.T @ blocks)[::-1]  # the optimum: top-C eigenvalues of the 2nd moment
    assert kept == pytest.approx(eig[:channels].sum() / eig.sum(), rel=1e-4) and kept > 0.98
    z = np.asarray(latents.encode_images(ae, u8, sample=False))  # [N, h, h, C] model space
    assert z.shape == (48, h, h, channels) and abs(z.mean()) < 1e-4 and abs(z.std() - 1.0) < 1e-4
    back = np.asarray(ae.decode(ae.encode(jnp.asarray(x, jnp.float32)).mode()))
    proj_blocks = blocks @ v @ v.T  # the best rank-C reconstruction, which decode(encode(x)) must equal
    np.testing.assert_allclose(np.asarray(pixel_ae.space_to_depth(jnp.asarray(back), factor)).reshape(-1, d),
                               proj_blocks, atol=1e-4)
    rec = np.asarray(np.clip(np.rint(np.asarray(vae.decode_latents(ae, jnp.asarray(z))) * 255), 0, 255), np.uint8)
    got, want = oracle.decode_attributes(rec), oracle.decode_attributes(u8)
    for k in ("category", "colour"):
        assert (got[k] == want[k]).mean() >= 0.95, k
    pixel_ae.save(ae, tmp_path / "pca")
    loaded = load_vae(tmp_path / "pca")
    assert loaded.cfg == ae.cfg
    np.testing.assert_array_equal(np.asarray(loaded.proj[...]), w)
    with pytest.raises(ValueError, match="needs proj of shape"):
        pixel_ae.PixelAutoencoder(cfg)
    with pytest.raises(ValueError, match="needs factor"):
        pixel_ae.PixelAEConfig(factor=2, basis="pca")
    with pytest.raises(ValueError, match="basis must be one of"):
        pixel_ae.PixelAEConfig(basis="svd")
    pixel_ae.save(pixel_ae.PixelAutoencoder(ae.cfg, proj=w + 0.1), tmp_path / "bad")  # not a PCA basis
    with pytest.raises(ValueError, match="orthogonal columns"):
        load_vae(tmp_path / "bad")


def test_unwhitened_pca_keeps_each_component_energy(tmp_path):
    """basis "pca_unwhitened": the same subspace as "pca" (identical reconstructions), orthonormal columns (latent
    L2 = pixel L2 of the projected blocks), channel energies in descending order; saves/loads via the VAE loader."""
    from dualfashion_jax.modeling.vae import load_vae

    u8 = _garments()
    white = pixel_ae.fit(pixel_ae.PixelAEConfig(factor=4, basis="pca"), u8)
    plain = pixel_ae.fit(pixel_ae.PixelAEConfig(factor=4, basis="pca_unwhitened"), u8)
    w = np.asarray(plain.proj[...])  # [48, 16]
    np.testing.assert_allclose(w.T @ w, np.eye(16), atol=1e-5)  # orthonormal columns: no whitening
    wv = np.asarray(white.proj[...])
    np.testing.assert_allclose(wv / np.linalg.norm(wv, axis=0), w, atol=1e-5)  # same directions, same signs
    x = jnp.asarray(u8.astype(np.float32) / 127.5 - 1.0)
    np.testing.assert_allclose(np.asarray(plain(x)), np.asarray(white(x)), atol=1e-4)  # tolerance: fp32 rounding
    z = np.asarray(latents.encode_images(plain, u8, sample=False))  # [N, 8, 8, 16] model space
    assert abs(z.mean()) < 1e-4 and abs(z.std() - 1.0) < 1e-4  # global shift/scale still fitted
    std = z.reshape(-1, 16).std(0)
    assert np.all(np.diff(std[:4]) < 0) and std[0] > 3 * std[-1]  # the first components carry the energy
    pixel_ae.save(plain, tmp_path / "plain")
    loaded = load_vae(tmp_path / "plain")
    assert loaded.cfg == plain.cfg
    np.testing.assert_array_equal(np.asarray(loaded.proj[...]), w)
    with pytest.raises(ValueError, match="'pca_unwhitened' needs proj of shape"):
        pixel_ae.PixelAutoencoder(plain.cfg)
