"""The one-request API: 0 and 3 outfit images, reproducible per seed, clear errors for bad requests."""
import numpy as np
import pytest

from generation_support import make_workdir, make_world

from dualfashion_jax.generation.api import recommend
from dualfashion_jax.generation.bundle import load_bundle
from dualfashion_jax.generation.settings import GenSettings
from dualfashion_jax.samplers.flow_euler import GuidanceConfig

FAST = GenSettings(guidance=GuidanceConfig(num_steps=2), caption_steps=3)
PREF = {"Color": "red", "Material": "cotton", "Design features": "plain", "Clothing Fashion Style": "casual"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = make_world(tmp_path_factory.mktemp("api"), num_users=2)
    return load_bundle(make_workdir(root, root / "wd"))


def test_recommend_with_0_and_3_outfit_images(bundle):
    rng = np.random.default_rng(0)
    outfit = [rng.integers(0, 256, (40, 30, 3), dtype=np.uint8) for _ in range(3)]  # any size: resized + cropped
    imgs3, caps3 = recommend(bundle, PREF, "shoes", outfit, num_images=2, num_captions=2, seed=0, settings=FAST)
    assert imgs3.shape == (2, 32, 32, 3) and imgs3.dtype == np.uint8
    assert len(caps3) == 2 and all(isinstance(c, str) for c in caps3)
    assert np.abs(imgs3[0].astype(int) - imgs3[1]).max() > 10  # two samples, two noises
    again, caps_again = recommend(bundle, PREF, "shoes", outfit, num_images=2, num_captions=2, seed=0, settings=FAST)
    np.testing.assert_array_equal(again, imgs3)  # same seed -> identical
    assert caps_again == caps3
    imgs0, caps0 = recommend(bundle, PREF, "shoes", [], num_images=2, num_captions=2, seed=0, settings=FAST)
    assert imgs0.shape == (2, 32, 32, 3) and np.abs(imgs0.astype(int) - imgs3).max() > 0  # context matters
    other, _ = recommend(bundle, PREF, "shoes", [], num_images=2, num_captions=2, seed=1, settings=FAST)
    assert np.abs(other.astype(int) - imgs0).max() > 10  # another seed -> other samples


def test_recommend_errors(bundle):
    with pytest.raises(ValueError, match="unknown key"):
        recommend(bundle, {"Colour": "red"}, "shoes", [])
    with pytest.raises(ValueError, match="at most 3"):
        recommend(bundle, PREF, "shoes", [np.zeros((8, 8, 3), np.uint8)] * 4)
    with pytest.raises(ValueError, match=r"outfit_images\[0\]"):
        recommend(bundle, PREF, "shoes", [np.zeros((8, 8), np.float32)])
    with pytest.raises(ValueError, match="category"):
        recommend(bundle, PREF, "", [])
