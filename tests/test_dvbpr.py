"""DVBPR (issue #17): the model (its small-map conv against the conv), the BPR loss against NumPy, one compiled
catalogue encoder for any catalogue size, the triple source, the `dvbpr` train stage (learns,
resumes exactly, saves a loadable model) and its config errors."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dualfashion_jax.core import config as config_lib
from dualfashion_jax.data import interactions, keys as K
from dualfashion_jax.data.format import SafeDataset
from dualfashion_jax.data.images import ItemImages
from dualfashion_jax.data.synthetic.make import make_dataset
from dualfashion_jax.evaluators import ranking_metrics as rm
from dualfashion_jax.modeling.dvbpr import load_dvbpr
from dualfashion_jax.models import dvbpr as dvbpr_model
from dualfashion_jax.models.dvbpr import DVBPR, DVBPRConfig
from dualfashion_jax.models.vae_blocks import conv
from dualfashion_jax.training import dvbpr as stage, train, tasks

CFG = DVBPRConfig(num_users=5, in_channels=4, input_size=8, channels=(8, 16), hidden=16, embed_dim=6)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("dvbpr") / "data", seed=0, image_size=32, num_users=8,
                        verbose=False)


def _config(data_dir, steps=12, batch=16, **over):
    c = config_lib.load(f"configs/dvbpr.py:tiny,data={data_dir},steps={steps},batch={batch}")
    c.progress_bar, c.tensorboard, c.checkpoint.async_save = False, False, False
    for k, v in over.items():
        node, *path = k.split(".")
        target = c
        for p in [node, *path][:-1]:
            target = target[p]
        target[[node, *path][-1]] = v
    return c


# ------------------------------------------------------------------------------------------------ model + loss
def test_bpr_loss_matches_numpy_and_is_stable():
    r = np.random.default_rng(0)
    sp, sn = r.normal(size=32).astype(np.float32) * 3, r.normal(size=32).astype(np.float32) * 3
    ref = np.mean(np.log1p(np.exp(-(sp.astype(np.float64) - sn))))
    np.testing.assert_allclose(float(stage.bpr_loss(jnp.asarray(sp), jnp.asarray(sn))), ref, rtol=1e-6, atol=1e-7)
    big = stage.bpr_loss(jnp.asarray([-200.0, 200.0]), jnp.asarray([200.0, -200.0]))  # exp overflow in a naive form
    assert np.isfinite(float(big)) and abs(float(big) - 200.0) < 1e-3


def test_model_scores_are_user_dot_item_embedding():
    model = DVBPR(CFG, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (3, 8, 8, 4))
    y = jax.random.normal(jax.random.key(2), (3, 8, 8, 4))
    u = jnp.asarray([0, 4, 2])
    sp, sn = model(u, x, y)
    assert sp.shape == sn.shape == (3,)
    ref = np.sum(np.asarray(model.theta[...])[[0, 4, 2]] * np.asarray(model.encoder(x)), -1)
    np.testing.assert_allclose(np.asarray(sp), ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(model.score(u, y)), np.asarray(sn), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match=r"expected \[B, H, W, 4\]"):
        model.encoder(jnp.zeros((2, 8, 8, 3)))


@pytest.mark.parametrize("field,value,match", [("input_kind", "pixels", "input_kind"), ("embed_dim", 0, "embed_dim"),
                                               ("channels", (), "channels")])
def test_bad_model_config(field, value, match):
    with pytest.raises(ValueError, match=match):
        DVBPRConfig(**{**dict(num_users=2), field: value})


def test_config_round_trip_and_unknown_field():
    d = CFG.to_dict()
    assert DVBPRConfig.from_dict(d) == CFG and json.loads(json.dumps(d)) == d
    with pytest.raises(ValueError, match="unknown DVBPRConfig fields"):
        DVBPRConfig.from_dict({**d, "bias": True}, source="x.json")


# ------------------------------------------------------------------------------------------------ data
def test_triples_are_deterministic_and_negatives_unseen(data_dir):
    ds = SafeDataset(data_dir)
    src = interactions.TripleSource(ds, "train", seed=3, rounds=2)
    assert len(src) == 2 * len(src.pairs) and src.kind == K.IMAGE
    for i in range(0, len(src), 7):
        u, p, n = src.triple(i)
        assert p in src.positives[u] and n not in src.positives[u] and 1 <= n <= ds.num_items
        assert src.triple(i) == (u, p, n)
    ex = src[0]
    assert ex["pos_images"].shape == (32, 32, 3) and ex["neg_images"].dtype == np.uint8 and ex[K.UID].dtype == np.int32
    assert interactions.num_users(ds) == 8


def test_same_category_negatives(data_dir):
    ds = SafeDataset(data_dir)
    cats = np.asarray(ds.iid_category)
    same = interactions.TripleSource(ds, "train", seed=1, same_category=1.0)
    uni = interactions.TripleSource(ds, "train", seed=1)
    n = range(0, len(same), 3)
    for i in n:
        u, p, neg = same.triple(i)
        assert cats[neg] == cats[p] and neg not in same.positives[u]
    share = np.mean([cats[uni.triple(i)[2]] == cats[uni.triple(i)[1]] for i in n])
    assert share < 0.5, share  # uniform negatives mostly come from other categories
    with pytest.raises(ValueError, match="same_category must be in"):
        interactions.TripleSource(ds, "train", same_category=1.5)


def test_sample_negative_dense_user_and_full_user():
    rng = np.random.default_rng(0)
    pos = np.arange(1, 10)  # all but item 10 of 10
    assert all(interactions.sample_negative(rng, 10, pos) == 10 for _ in range(5))
    with pytest.raises(ValueError, match="all 10 catalogue items"):
        interactions.sample_negative(rng, 10, np.arange(1, 11))


@pytest.mark.parametrize("size,stride", [(1, 1), (2, 1), (2, 2), (3, 2)])
def test_small_map_conv_equals_the_conv(size, stride):
    c = conv(5, 7, 3, stride=stride, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    c.bias[...] = jax.random.normal(jax.random.key(1), c.bias[...].shape)
    x = jax.random.normal(jax.random.key(2), (4, size, size, 5))
    got, ref = dvbpr_model.small_map_conv(x, c, stride), c(x)
    assert got.shape == ref.shape
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_catalogue_embeddings_compile_once_for_any_catalogue_size(data_dir, tmp_path):
    """Chunks are padded to one batch shape: catalogues of other sizes and other models reuse the compiled program."""
    big = SafeDataset(data_dir)
    small = SafeDataset(make_dataset(tmp_path / "small", seed=1, image_size=32, num_users=8, items_per_combo=1,
                                     verbose=False))
    assert big.num_items != small.num_items and (big.num_items + 1) % 64 and (small.num_items + 1) % 64
    cfg = DVBPRConfig(num_users=8, input_size=32, channels=(8, 16), hidden=16, embed_dim=6)
    model = DVBPR(cfg, rngs=nnx.Rngs(0))
    rm.catalogue_embeddings(model, small, batch=64)
    compiled = rm._encode._cache_size()
    emb = rm.catalogue_embeddings(model, big, batch=64)
    rm.catalogue_embeddings(DVBPR(cfg, rngs=nnx.Rngs(1)), small, batch=64)
    assert rm._encode._cache_size() == compiled
    x = interactions.model_input(ItemImages(big, 32).many(np.arange(big.num_items + 1)), "image")
    assert emb.shape == (big.num_items + 1, 6)
    np.testing.assert_allclose(emb, np.asarray(model.encoder(x)), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------ the stage
def test_training_learns_saves_and_loads(data_dir, tmp_path):
    c = _config(data_dir, steps=60, batch=64, log_every=1)
    c.optim.lr, c.optim.warmup_steps = 3e-3, 5
    out = train.run(c, str(tmp_path / "wd"))
    lines = [json.loads(x) for x in (tmp_path / "wd" / "metrics.jsonl").read_text().splitlines()]
    first, last = np.mean([x["bpr"] for x in lines[:5]]), np.mean([x["bpr"] for x in lines[-5:]])
    assert out["step"] == 60 and last < first - 0.05, (first, last)
    model, step = load_dvbpr(tmp_path / "wd")
    assert step == 60 and model.cfg.input_kind == "image" and model.cfg.num_users == 8
    ds = SafeDataset(data_dir)
    train_pos = interactions.user_positives(ds, "train")
    s = rm.dvbpr_scorer(model, ds)(np.asarray(sorted(train_pos)))
    auc = rm.heldout_auc(s, np.asarray(sorted(train_pos)), train_pos, {})  # fit to the training interactions
    assert auc > 0.6, auc


def test_resume_equals_uninterrupted(data_dir, tmp_path):
    full = train.run(_config(data_dir, steps=6), str(tmp_path / "a"))
    train.run(_config(data_dir, steps=6, **{"checkpoint.every_steps": 3}, total_steps=3), str(tmp_path / "b"),
              allow_config_change=True)
    resumed = train.run(_config(data_dir, steps=6, **{"checkpoint.every_steps": 3}), str(tmp_path / "b"),
                        allow_config_change=True)
    assert resumed["start_step"] == 3
    for a, b in zip(jax.tree.leaves(full["state"]["params"]), jax.tree.leaves(resumed["state"]["params"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("key,value,match", [
    ("data.use_latents", "maybe", "config.data.use_latents"),
    ("loss.user_l2", -1.0, "config.loss.user_l2"),
    ("model.dtype", "float16", "config.model.dtype"),
    ("data.rounds", 0, "config.data.rounds"),
])
def test_bad_config_errors(data_dir, key, value, match):
    with pytest.raises(ValueError, match=match):
        tasks.build(_config(data_dir, **{key: value}))


def test_stage_is_registered_and_config_sizes_load():
    assert tasks.REGISTRY["dvbpr"] == "dualfashion_jax.training.dvbpr"
    for size in ("tiny", "demo", "ifashion"):
        c = config_lib.load(f"configs/dvbpr.py:{size}")
        assert c.stage == "dvbpr" and c.batch_size > 0
    with pytest.raises(ValueError, match="a size must come first"):
        config_lib.load("configs/dvbpr.py:huge")
