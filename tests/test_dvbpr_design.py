"""The `design` task (issue #17): shapes, determinism, strength -> start step, eta raising the user's score, errors."""
import dataclasses

import numpy as np
import pytest
from flax import nnx

from generation_support import make_workdir, make_world

from dualfashion_jax.data.format import SafeDataset
from dualfashion_jax.data.images import ItemImages
from dualfashion_jax.generation.bundle import load_bundle
from dualfashion_jax.generation.design import DesignProgram, DesignSettings
from dualfashion_jax.models.dvbpr import DVBPR, DVBPRConfig
from dualfashion_jax.samplers.flow_euler import GuidanceConfig
from dualfashion_jax.samplers.score_guidance import ScoreGuidanceConfig


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = make_world(tmp_path_factory.mktemp("design"))
    make_workdir(root, root / "wd")
    bundle = load_bundle(root / "wd")
    dv = DVBPR(DVBPRConfig(num_users=4, input_kind="latent", in_channels=16, input_size=16, channels=(8, 8),
                           hidden=8, embed_dim=4), rngs=nnx.Rngs(0))
    ds = SafeDataset(root / "data")
    images = ItemImages(ds, bundle.image_size).many([1, 2])
    ids, mask = bundle.tokenizer.encode(["{}", "{}"])
    texts = {"pref_ids": ids, "pref_mask": mask, "sent_ids": ids, "sent_mask": mask}
    return bundle, dv, images, texts


SETTINGS = DesignSettings(strength=0.5, score=ScoreGuidanceConfig(eta=2.0),
                          guidance=GuidanceConfig(mode="cfg", cfg_scale=2.0, num_steps=4))


def test_design_shapes_determinism_and_score(setup):
    bundle, dv, images, texts = setup
    prog = DesignProgram(bundle, dv, SETTINGS)
    a = prog(images, np.array([0, 3]), np.array([1, 2]), texts)
    b = prog(images, np.array([0, 3]), np.array([1, 2]), texts)
    assert a["images"].shape == images.shape and a["images"].dtype == np.uint8
    assert a["latents"].shape == (2, 16, 16, 16) and a["score_after"].shape == (2,)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    plain = DesignProgram(bundle, dv, dataclasses.replace(SETTINGS, score=ScoreGuidanceConfig(eta=0.0)))
    p = plain(images, np.array([0, 3]), np.array([1, 2]), texts)
    np.testing.assert_allclose(p["score_before"], a["score_before"], rtol=1e-6)
    assert np.all(a["score_after"] > p["score_after"])


def test_design_settings_and_errors(setup):
    assert DesignSettings(strength=1.0, guidance=GuidanceConfig(num_steps=10)).start_step == 0
    assert DesignSettings(strength=0.3, guidance=GuidanceConfig(num_steps=10)).start_step == 7
    with pytest.raises(ValueError, match="strength must be in"):
        DesignSettings(strength=0.0)
    bundle, dv, images, texts = setup
    with pytest.raises(ValueError, match=r"texts\['sent_ids'\]"):
        DesignProgram(bundle, dv, SETTINGS)(images, np.array([0, 1]), np.array([1, 2]),
                                            {**texts, "sent_ids": texts["sent_ids"][:1]})
