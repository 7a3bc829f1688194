"""The caption branch's image stream (context mean / own generated image / null) and the caption sampler knobs
(`GenSettings.caption_image`, `caption_temperature`, `caption_order`): known-answer selection, validation, CLI
and config wiring."""
import numpy as np
import pytest
import jax.numpy as jnp

from dualfashion_jax.generation import cli
from dualfashion_jax.generation.sampling import caption_image
from dualfashion_jax.generation.settings import GenSettings

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
    with pytest.raises(ValueError, match="caption_temperature must be >= 0"):
        GenSettings(caption_temperature=-0.5)
    new = ("caption_image", "caption_temperature", "caption_order")
    assert GenSettings.from_json({k: v for k, v in s.to_json().items() if k not in new}) == s  # older run.json


def test_cli_flags_reach_the_settings():
    args = cli._parser().parse_args(["--task", "pfitb", "--checkpoint", "x", "--out", "y", "--caption-image",
                                     "generated", "--caption-temperature", "0", "--caption-order", "confidence"])
    s = cli.settings_from_args(args)
    assert s.caption_image == "generated" and s.caption_temperature == 0.0 and s.caption_order == "confidence"
    s = cli.settings_from_args(cli._parser().parse_args(["--task", "gor", "--checkpoint", "x", "--out", "y"]))
    assert s.caption_image == "context" and s.caption_temperature == 1.0
