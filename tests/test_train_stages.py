"""Stages 2 and 3 end to end on a tiny synthetic dataset: the real DualMMDiT, a frozen random T5, the stage
objectives and the grain pipeline; stage 3 starts from the stage-2 workdir (`init_from`, every param loaded)."""
import json

import numpy as np
import pytest

from dualfashion_jax.core import config as config_lib
from dualfashion_jax.training import metrics, train

CONFIG = "configs/stage{}.py:tiny"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from dualfashion_jax.data.format import SafeDataset
    from dualfashion_jax.data.synthetic.make import make_dataset
    from dualfashion_jax.text import tokenizer as tk

    root = tmp_path_factory.mktemp("demo")
    data = make_dataset(root / "data", seed=0, image_size=32, num_users=16, verbose=False)
    ds = SafeDataset(data)
    texts = [json.dumps(v["elements"]) for v in ds.item_info.values()] + list(ds.categories.values())
    tk.build_test_tokenizer(texts + ["Recommend a fashion item, on white background."], root / "tokenizer",
                            vocab_size=200, max_length=32, user_symbols=tk.caption_scaffold())
    return root


def _config(stage, root, init_from=""):
    import os
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    c = config_lib.load(os.path.join(here, CONFIG.format(stage)) +
                        f",data={root / 'data'},tokenizer={root / 'tokenizer'},steps=2,init_from={init_from}")
    c.progress_bar, c.tensorboard, c.log_every = False, False, 1
    return c


@pytest.mark.slow
def test_stage2_then_stage3_from_stage2(demo):
    out2 = train.run(_config(2, demo), str(demo / "stage2"))
    rows = metrics.read_metrics(str(demo / "stage2" / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert np.isfinite(r["loss"]) and {"loss_img", "loss_txt", "grad_norm", "lr"} <= set(r)
    assert out2["state"]["ema"], "stage-2 demo keeps an EMA"
    assert (demo / "stage2" / "checkpoints" / "2").is_dir()
    data_state = json.loads((demo / "stage2" / "checkpoints" / "2" / "data" / "metadata").read_text())
    assert set(data_state) == {"main"}  # the grain pipeline's iterator state is checkpointed
    from dualfashion_jax.core.converted import load_converted
    meta, flat = load_converted(demo / "stage2" / "frozen" / "t5", kind="t5")  # the random demo T5, for generation
    assert meta["config"]["d_model"] == 32 and "shared/embedding" in flat
    saved = json.loads((demo / "stage2" / "model_config.json").read_text())  # generation rebuilds from this
    assert saved["stage2"] is True and saved["vocab_size"] >= 100 and min(np.atleast_1d(saved["latent_size"])) > 0
    c = _config(2, demo)
    c.total_steps = 3
    resumed = train.run(c, str(demo / "stage2"))  # same command, more steps: resumes at step 2
    assert resumed["start_step"] == 2 and resumed["step"] == 3 and np.isfinite(resumed["metrics"]["loss"])
    out3 = train.run(_config(3, demo, init_from=demo / "stage2"), str(demo / "stage3"))
    assert out3["init_from_fresh"] == []  # every stage-3 param came from stage 2
    assert np.isfinite(out3["metrics"]["loss"]) and out3["state"]["ema"] == {}  # stage 3: no EMA (spec §4)
    # the original's stage 3 (config.model.stage3_drop_stage2): r_t, r_c and the MLP dropped, the same losses
    c3 = _config(3, demo, init_from=demo / "stage2")
    c3.model.stage3_drop_stage2 = True
    out3d = train.run(c3, str(demo / "stage3_drop"))
    assert "stage2" in out3["state"]["params"] and "stage2" not in out3d["state"]["params"]
    assert json.loads((demo / "stage3_drop" / "model_config.json").read_text())["stage2"] is False
    kept, dropped = (metrics.read_metrics(str(demo / d / "metrics.jsonl")) for d in ("stage3", "stage3_drop"))
    np.testing.assert_allclose([r["loss"] for r in dropped], [r["loss"] for r in kept], rtol=1e-6)
    np.testing.assert_allclose([r["grad_norm"] for r in dropped], [r["grad_norm"] for r in kept], rtol=1e-5)


@pytest.mark.slow
def test_stage2_on_images_with_the_pixel_ae_vae(demo, tmp_path):
    """Images (no latents) VAE-encoded in the step by a `pixel_s2d` checkpoint: the model is sized for its
    factor-4 latents (32 px -> 8 x 8), not the conv-VAE formula, and the loss is finite."""
    from dualfashion_jax.data.format import SafeDataset
    from dualfashion_jax.data.images import ItemImages
    from dualfashion_jax.models import pixel_ae

    ds = SafeDataset(demo / "data")
    assert not (ds.latents_dir / "latents.npy").is_file()  # the step encodes images
    images = ItemImages(ds).many(np.arange(1, 65))
    vae_cfg = pixel_ae.PixelAEConfig(factor=4, sample_size=32, basis="pca")
    pixel_ae.save(pixel_ae.fit(vae_cfg, images), tmp_path / "vae")
    c = _config(2, demo)
    c.vae.checkpoint, c.total_steps = str(tmp_path / "vae"), 1
    out = train.run(c, str(tmp_path / "stage2"))
    assert np.isfinite(out["metrics"]["loss"]) and np.isfinite(out["metrics"]["loss_img"])
    saved = json.loads((tmp_path / "stage2" / "model_config.json").read_text())
    assert list(np.atleast_1d(saved["latent_size"])) in ([8], [8, 8])
