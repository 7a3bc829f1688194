"""encode-latents: every item image VAE-encoded once into latents/latents.npy (+ meta), read back by examples."""
import json
import shutil

import numpy as np
import pytest

from dualfashion_jax.data import encode_latents as EL
from dualfashion_jax.data.examples import Stage2Source
from dualfashion_jax.data.format import SafeDataset
from dualfashion_jax.data.images import ItemImages
from dualfashion_jax.data.tiny import make_tiny_dataset
from dualfashion_jax.text import tokenizer as tk

vae = pytest.importorskip("dualfashion_jax.models.vae")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from flax import nnx

    from dualfashion_jax.core.converted import save_converted
    from dualfashion_jax.core.params import flat_params

    root = make_tiny_dataset(tmp_path_factory.mktemp("tiny") / "ds", num_items=10, rows_per_split=4)
    cfg = vae.get_config("tiny")
    ae = vae.AutoencoderKL(cfg, rngs=nnx.Rngs(0))
    ckpt = save_converted(tmp_path_factory.mktemp("vae") / "ckpt", kind="vae", config=cfg.to_dict(),
                          params=flat_params(ae))
    return root, ae, cfg, ckpt


def test_cli_encodes_every_item_in_model_space(setup, capsys):
    import jax.numpy as jnp

    root, ae, cfg, ckpt = setup
    assert EL.main(["--data", str(root), "--vae", str(ckpt), "--mode", "mean", "--batch-size", "4"]) == 0
    assert "wrote" in capsys.readouterr().out
    lat = np.load(root / "latents" / "latents.npy")
    meta = json.loads((root / "latents" / "meta.json").read_text())
    assert lat.shape == (11, 8, 8, 16) and meta["shape"] == [11, 8, 8, 16] and meta["mode"] == "mean"
    assert (lat[0] == 0).all() and meta["blank"] == "zeros" and meta["items_without_image"] == 0
    ds = SafeDataset(root)
    x = jnp.asarray(ItemImages(ds).many(range(1, 11)), jnp.float32) / 127.5 - 1.0
    ref = np.asarray(vae.to_model_latents(ae.encode(x).mode(), cfg))
    np.testing.assert_allclose(lat[1:], ref, rtol=1e-5, atol=1e-5)  # fp32, batch 4 vs 10: tolerance 1e-5


def test_sample_mode_is_seeded_and_examples_use_latents(setup, tmp_path):
    root, ae, cfg, _ = setup
    d = tmp_path / "ds"
    shutil.copytree(root, d)
    a = np.load(EL.encode_dataset(d, ae, mode="sample", seed=1, batch_size=4, progress=False)).copy()
    b = np.load(EL.encode_dataset(d, ae, mode="sample", seed=1, batch_size=4, progress=False)).copy()
    c = np.load(EL.encode_dataset(d, ae, mode="sample", seed=2, batch_size=4, progress=False))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a[1:], c[1:])
    ds = SafeDataset(d)
    tok = tk.build_test_tokenizer([tk.caption_json(v["elements"]) for v in ds.item_info.values()],
                                  tmp_path / "tok", vocab_size=100, max_length=96)
    ex = Stage2Source(ds, tok)[0]
    assert ex["target_latents"].shape == (8, 8, 16)
    np.testing.assert_array_equal(ex["target_latents"], c[int(ds.split("train").outfits[0, 0])])
    with pytest.raises(ValueError, match="mode must be one of"):
        EL.encode_dataset(d, ae, mode="median")
