"""The caption branch's image stream (context mean / own generated image / null) and the caption sampler knobs
(`GenSettings.caption_image`, `caption_temperature`, `caption_order`): known-answer selection, validation, CLI
and config wiring; a separate caption model (`bundle.with_captioner`) writes the captions, not the images."""
import dataclasses
import types

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from generation_support import make_workdir, make_world

from dualfashion_jax.generation import cli
from dualfashion_jax.generation.bundle import BundleError, load_bundle, with_captioner
from dualfashion_jax.generation.inputs import SplitInputs
from dualfashion_jax.generation.pfitb import pfitb_batch
from dualfashion_jax.generation.sampling import Programs, caption_image, make_mesh
from dualfashion_jax.generation.settings import GenSettings
from dualfashion_jax.samplers.flow_euler import GuidanceConfig

C, N, M = 2, 2, 3


def test_caption_image_known_answers():
    ctx = jnp.arange(C, dtype=jnp.float32).reshape(C, 1, 1, 1) * jnp.ones((C, 2, 2, 3))  # chain c filled with c
    lat = (10 + jnp.arange(C * N, dtype=jnp.float32)).reshape(C * N, 1, 1, 1) * jnp.ones((C * N, 2, 2, 3))
    got = caption_image("context", ctx, lat, N, M)
    np.testing.assert_array_equal(np.asarray(got[:, 0, 0, 0]), [0, 0, 0, 1, 1, 1])  # [C*M], chain-major
    got = caption_image("generated", ctx, lat, N, M)
    # caption j of chain c reads image j % N of chain c: lat row c * N + j % N
    np.testing.assert_array_equal(np.asarray(got[:, 0, 0, 0]), [10, 11, 10, 12, 13, 12])
    assert got.shape == (C * M, 2, 2, 3)
    assert caption_image("null", ctx, lat, N, M) is None
    with pytest.raises(ValueError, match="caption image stream 'mean'"):
        caption_image("mean", ctx, lat, N, M)


def test_settings_validation_and_defaults():
    s = GenSettings()
    assert s.caption_image == "context" and s.caption_temperature == 1.0 and s.caption_order == "random"  # original
    with pytest.raises(ValueError, match="caption_order must be one of"):
        GenSettings(caption_order="left")
    with pytest.raises(ValueError, match="caption_image must be one of"):
        GenSettings(caption_image="image")
    with pytest.raises(ValueError, match="caption_image_scale must be >= 0 and needs"):
        GenSettings(caption_image="null", caption_image_scale=2.0)
    with pytest.raises(ValueError, match="caption_temperature must be >= 0"):
        GenSettings(caption_temperature=-0.5)
    for bad in ("Colour", "", "Color,Size"):
        with pytest.raises(ValueError, match="caption_image_keys must be 'all' or comma-separated keys"):
            GenSettings(caption_image="generated", caption_image_scale=1.0, caption_image_keys=bad)
    with pytest.raises(ValueError, match="with template_source 'budget'"):  # GT templates may lack a key's run
        GenSettings(caption_image_keys="Color", template_source="ground_truth")
    assert GenSettings(caption_image_keys="Color").caption_image_runs() == (0,)
    assert GenSettings(caption_image_keys="Material, Clothing Fashion Style").caption_image_runs() == (1, 3)
    assert s.caption_image_runs() is None
    new = ("caption_image", "caption_temperature", "caption_order", "caption_image_scale", "caption_image_keys")
    assert GenSettings.from_json({k: v for k, v in s.to_json().items() if k not in new}) == s  # older run.json


def test_cli_flags_reach_the_settings():
    args = cli._parser().parse_args(["--task", "pfitb", "--checkpoint", "x", "--out", "y", "--caption-image",
                                     "generated", "--caption-temperature", "0", "--caption-order", "confidence",
                                     "--caption-image-scale", "2", "--caption-image-keys", "Color"])
    s = cli.settings_from_args(args)
    assert s.caption_image == "generated" and s.caption_temperature == 0.0 and s.caption_order == "confidence"
    assert s.caption_image_scale == 2.0 and s.caption_image_keys == "Color"
    s = cli.settings_from_args(cli._parser().parse_args(["--task", "gor", "--checkpoint", "x", "--out", "y"]))
    assert s.caption_image == "context" and s.caption_temperature == 1.0


@pytest.fixture(scope="module")
def two_bundles(tmp_path_factory):
    root = make_world(tmp_path_factory.mktemp("capmodel"), num_users=2)
    a = load_bundle(make_workdir(root, root / "wd_a"))
    b = load_bundle(make_workdir(root, root / "wd_b", ema_shift=0.05))  # same tokenizer/latents, other params
    return root, a, b


def _sample(bundle, settings):
    """(image latents [2, 1, ...], caption ids [2, 1, L]) for the first 2 test rows on one device."""
    progs = Programs(bundle, settings, make_mesh(jax.local_devices()[:1]))
    inputs = SplitInputs(bundle.data_dir, "test", bundle, settings)
    host = pfitb_batch(inputs, [inputs.row(i) for i in range(2)], 1, 1)
    host["ctx_latents"] = progs.encode(host.pop("ctx_images"), host["uid"], host["oid"])
    return progs.sample(host)


@pytest.mark.slow  # ~75 s on the shared 2-core CPU: three bundles' sample programs compiled
def test_caption_model_writes_the_captions_and_leaves_the_images(two_bundles):
    _, a, b = two_bundles
    s = GenSettings(num_images=1, num_captions=1, seed=1, guidance=GuidanceConfig(num_steps=2), caption_steps=3,
                    caption_temperature=0.0)
    lat_a, ids_a = _sample(a, s)
    lat_ab, ids_ab = _sample(with_captioner(a, b), s)
    _, ids_b = _sample(b, s)
    np.testing.assert_array_equal(lat_ab, lat_a)  # images from a
    np.testing.assert_array_equal(ids_ab, ids_b)  # captions from b (its model and its T5)
    assert not np.array_equal(ids_b, ids_a)
    assert with_captioner(a, b).info["caption_model"]["source"] == b.info["source"]


def test_caption_model_mismatch_is_named(two_bundles):
    _, a, b = two_bundles
    cfg = dataclasses.replace(b.model.config, in_channels=b.model.config.in_channels + 1)
    other = types.SimpleNamespace(tokenizer=b.tokenizer, model=types.SimpleNamespace(config=cfg), vae=b.vae,
                                  info={"source": "wd_c"})
    with pytest.raises(BundleError, match="caption model wd_c: does not fit the image model .*latent"):
        with_captioner(a, other)
    other.model, other.vae = b.model, a.t5  # right latents, a module that is not this VAE
    with pytest.raises(BundleError, match="VAE weights differ"):
        with_captioner(a, other)
