"""Oracle: attribute decoding from pixels (clean and degraded) and the oracle metrics on hand-made cases."""
import json

import numpy as np
import pytest
from PIL import Image

from dualfashion_jax.data import oracle as O
from dualfashion_jax.evaluators import oracle_metrics as OM
from dualfashion_jax.data.format import SafeDataset
from dualfashion_jax.data.synthetic import attributes as A
from dualfashion_jax.data.synthetic import fashion_mnist, load_truth, make_dataset, render, world
from dualfashion_jax.data.synthetic.truth import Truth

# Thresholds. Clean renders: colour and category >= 99 %, material >= 97 %. "Weak generator" degradation
# (gaussian blur sigma 1.0 px + gaussian noise sigma 8 of 255, at 32 px): colour/category >= 95 %, material >= 90 %.
CLEAN_MIN, CLEAN_MATERIAL_MIN = 0.99, 0.97
DEGRADED_MIN, DEGRADED_MATERIAL_MIN = 0.95, 0.90
BLUR, NOISE = 1.0, 8.0


def _render(cat, col, mat, rng, size=32, silhouettes=None):
    return np.stack([render.render_item(int(c), int(k), int(m), int(rng.integers(len(A.FEATURES))),
                                        render.Jitter.sample(rng), size,
                                        silhouette=None if silhouettes is None else silhouettes[i])
                     for i, (c, k, m) in enumerate(zip(cat, col, mat))])


@pytest.fixture(scope="module")
def every_combo():
    """One render of every (category, colour, material), random feature and jitter. [320, 32, 32, 3]"""
    rng = np.random.default_rng(7)
    grid = np.stack(np.meshgrid(np.arange(len(A.CATEGORIES)), np.arange(len(A.COLORS)),
                                np.arange(len(A.MATERIALS)), indexing="ij"), -1).reshape(-1, 3)
    imgs = _render(grid[:, 0], grid[:, 1], grid[:, 2], rng)
    return imgs, {"category": grid[:, 0], "colour": grid[:, 1], "material": grid[:, 2],
                  "style": A.STYLE_TABLE[grid[:, 1], grid[:, 2]]}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = make_dataset(tmp_path_factory.mktemp("oracle") / "ds", seed=0, verbose=False)
    return SafeDataset(out), load_truth(out)


def test_decode_clean(every_combo):
    imgs, truth = every_combo
    acc = OM.attribute_accuracy(O.decode_attributes(imgs), truth)
    assert acc["colour_acc"] >= CLEAN_MIN and acc["category_acc"] >= CLEAN_MIN, acc
    assert acc["material_acc"] >= CLEAN_MATERIAL_MIN and acc["style_acc"] >= CLEAN_MATERIAL_MIN, acc


def test_decode_blurred_and_noisy(every_combo):
    imgs, truth = every_combo
    bad = O.degrade(imgs, np.random.default_rng(3), BLUR, NOISE)
    assert np.abs(bad.astype(int) - imgs).mean() > 5  # the degradation is real
    dec = O.decode_attributes(bad)
    acc = OM.attribute_accuracy(dec, truth)
    assert acc["colour_acc"] >= DEGRADED_MIN and acc["category_acc"] >= DEGRADED_MIN, acc
    assert acc["material_acc"] >= DEGRADED_MATERIAL_MIN, acc
    for k in ("category_conf", "colour_conf", "material_conf"):
        assert dec[k].shape == (320,) and 0.0 <= dec[k].min() and dec[k].max() <= 1.0


def test_off_white_background_and_tint(every_combo):
    """A generator's grey/tinted background is white-balanced away instead of read as garment."""
    imgs, truth = every_combo
    shifted = np.clip(imgs.astype(np.float32) * np.array([0.86, 0.88, 0.92]), 0, 255).astype(np.uint8)
    acc = OM.attribute_accuracy(O.decode_attributes(shifted), truth)
    assert min(acc.values()) >= DEGRADED_MATERIAL_MIN, acc


def test_blank_and_bad_inputs(every_combo):
    white = np.full((2, 32, 32, 3), 255, np.uint8)
    dec = O.decode_attributes(white)
    assert (dec["colour"] == -1).all() and (dec["category"] == -1).all() and (dec["colour_conf"] == 0).all()
    with pytest.raises(ValueError, match="uint8"):
        O.decode_attributes(white.astype(np.float32))
    with pytest.raises(ValueError, match=r"\[N, S, S, 3\]"):
        O.decode_attributes(np.zeros((2, 3, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="calibrated for 32px"):
        O.get_oracle(32).decode(np.full((1, 48, 48, 3), 255, np.uint8))


def test_attribute_accuracy_by_hand():
    dec = {"category": np.array([0, 1, 2, 3]), "colour": np.array([0, 0, 1, 1])}
    true = {"category": np.array([0, 1, 2, 0]), "colour": np.array([0, 1, 1, 1]), "material": np.zeros(4)}
    assert OM.attribute_accuracy(dec, true) == {"category_acc": 0.75, "colour_acc": 0.75}
    with pytest.raises(ValueError, match="shape"):
        OM.attribute_accuracy(dec, {"colour": np.zeros(3)})


def test_caption_agreement_by_hand():
    # decoded: red cotton (sporty), navy denim (casual), black striped (sporty), yellow plaid (casual)
    dec = {"colour": np.array([0, 4, 7, 2]), "material": np.array([0, 1, 2, 3])}
    dec["style"] = A.STYLE_TABLE[dec["colour"], dec["material"]]
    caps = ['{"Color": "red", "Material": "cotton", "Design features": "plain", "Clothing Fashion Style": "sporty"}',
            "{'Color': 'navy', 'Material': 'denim', 'Clothing Fashion Style': 'formal',}",  # synonym, no feature
            "no caption at all",
            '"Color": "yellow", "Material": "striped knit", "Design features": "plain", '
            '"Clothing Fashion Style": "casual"']  # no braces
    got = OM.caption_agreement(caps, dec)
    assert got == {"caption_parse_rate": 0.5, "caption_colour_agreement": 0.75,
                   "caption_material_agreement": 0.5, "caption_style_agreement": 0.5}


def _hand_truth() -> Truth:
    """6 items, 2 users; see test_outfit_compatibility_by_hand for the item list."""
    n_cat, n_col, n_mat = len(A.CATEGORIES), len(A.COLORS), len(A.MATERIALS)
    item = {"category": np.array([-1, 0, 1, 5, 6, 6, 6]), "colour": np.array([-1, 0, 1, 7, 4, 3, 0]),
            "material": np.array([-1, 0, 0, 2, 1, 0, 0]), "feature": np.array([-1, 0, 0, 0, 0, 0, 0])}
    item["style"] = np.where(item["colour"] >= 0, A.STYLE_TABLE[item["colour"], item["material"]], -1)
    fav_c = np.zeros((2, n_cat), np.int64)
    fav_c[1, 0], fav_c[0, 5] = 3, 7
    col_prior = np.full((n_cat, n_col), 0.05)
    col_prior[0, 0], col_prior[0, 3], col_prior[5, 7] = 0.5, 0.25, 0.1
    return Truth(item, np.array([10, 11]), fav_c, np.zeros((2, n_cat), np.int64),
                 np.full((2, n_cat, n_col), 1.0 / n_col), col_prior, np.full((n_cat, n_mat), 1.0 / n_mat))


def test_preference_match_by_hand():
    truth = _hand_truth()
    uids, cats = np.array([10, 11, 10, 11]), np.array([0, 0, 5, 0])
    got = OM.preference_match({"colour": np.array([0, 1, 7, 3])}, uids, cats, truth)
    # favourites: (10, 0) red, (11, 0) green, (10, 5) black -> hits 1, 0, 1, 1
    assert got["pref_colour_match"] == 0.75
    assert got["pref_colour_chance"] == pytest.approx((0.5 + 0.25 + 0.1 + 0.25) / 4)
    assert got["pref_colour_lift"] == pytest.approx(0.75 / 0.275)
    with pytest.raises(ValueError, match=r"uids \[99\]"):
        OM.preference_match({"colour": np.array([0])}, np.array([99]), np.array([0]), truth)


def test_outfit_compatibility_by_hand():
    # items: 1 red cotton t-shirt, 2 orange cotton pants, 3 black striped shoe (all sporty),
    # bags: 4 navy denim (casual), 5 green cotton (clashes with red), 6 red cotton
    truth = _hand_truth()
    outfits = np.array([[1, 2, 3, 0], [1, 2, 3, 0], [0, 0, 0, 0], [1, 2, 3, 0]])
    gen = {"category": np.array([[0, 0, 0, 6], [0, 0, 0, 6], [0, 1, 5, 6], [0, 0, 0, 0]]),
           "colour": np.array([[0, 0, 0, 4], [0, 0, 0, 3], [0, 1, 7, 4], [0, 0, 0, 4]]),
           "material": np.array([[0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 2, 1], [0, 0, 0, 1]])}
    got = OM.outfit_compatibility(outfits, gen, truth)
    # row 0 ok, row 1 colour clash, row 2 (GOR) ok, row 3 generated a second t-shirt
    assert got["compat_rate"] == 0.5 and got["generated_items"] == 7.0
    # random bag {4 ok, 5 clash, 6 ok} -> 2/3 for rows 0-1; random t-shirt in row 3: only item 1 -> clash of roles
    assert got["compat_chance"] == pytest.approx((2 / 3 + 2 / 3 + 0.0) / 3)
    with pytest.raises(ValueError, match=r"generated\['colour'\]"):
        OM.outfit_compatibility(outfits, {**gen, "colour": gen["colour"][:2]}, truth)


def test_vectorised_rules_agree_with_world():
    rng = np.random.default_rng(0)
    cat = np.stack([rng.permutation(8)[:4] if rng.random() < 0.8 else rng.integers(0, 8, 4) for _ in range(3000)])
    col, mat = rng.integers(0, 8, (3000, 4)), rng.integers(0, 5, (3000, 4))
    col[::3] = col[::3, :1]  # enough compatible outfits too
    fast = O.compatible_batch(cat, col, mat)
    slow = np.array([not world.rule_violations(c, k, m) for c, k, m in zip(cat, col, mat)])
    assert (fast == slow).all() and 0.02 < slow.mean() < 0.5


def test_personalisation_is_measurable(dataset):
    """A generator that draws each user's favourite scores >> chance; one that samples the prior ~ chance."""
    ds, truth = dataset
    t, f = ds.split("test"), ds.fitb("test")
    blank = f.outfits == 0
    cats = t.category[blank]
    rows = truth.user_rows(t.uids)
    rng = np.random.default_rng(11)
    fav_c, fav_m = truth.fav_colour[rows, cats], truth.fav_material[rows, cats]
    perfect = O.decode_attributes(O.degrade(_render(cats, fav_c, fav_m, rng), rng, BLUR, NOISE))
    good = OM.preference_match(perfect, t.uids, cats, truth)
    assert good["pref_colour_match"] >= 0.9 and good["pref_colour_lift"] > 3.0, good
    rand_c = np.array([rng.choice(len(A.COLORS), p=truth.colour_prior[c] / truth.colour_prior[c].sum()) for c in cats])
    rand_m = rng.integers(0, len(A.MATERIALS), len(cats))
    rand = OM.preference_match(O.decode_attributes(_render(cats, rand_c, rand_m, rng)), t.uids, cats, truth)
    assert abs(rand["pref_colour_match"] - rand["pref_colour_chance"]) < 0.08, rand  # ~3 sigma at N=160
    # the ground-truth items themselves: compatible outfits; a random item of the category: about chance
    gt = t.outfits[blank]
    gt_imgs = _render(truth.item["category"][gt], truth.item["colour"][gt], truth.item["material"][gt], rng)
    dec = O.decode_attributes(gt_imgs)
    slots = {k: np.where(blank, dec[k][:, None], 0) for k in ("category", "colour", "material")}
    comp = OM.outfit_compatibility(f.outfits, slots, truth)
    assert comp["compat_rate"] >= 0.97 and 0.1 < comp["compat_chance"] < 0.7, comp


@pytest.mark.slow
def test_decode_64px():
    rng = np.random.default_rng(5)
    n = 120
    cat, col, mat = rng.integers(0, 8, n), rng.integers(0, 8, n), rng.integers(0, 5, n)
    imgs = O.degrade(_render(cat, col, mat, rng, size=64), rng, 1.5, NOISE)  # same blur relative to the garment
    acc = OM.attribute_accuracy(O.decode_attributes(imgs), {"category": cat, "colour": col, "material": mat})
    assert min(acc.values()) >= DEGRADED_MATERIAL_MIN, acc


@pytest.mark.slow
@pytest.mark.skipif(not fashion_mnist.available(), reason="Fashion-MNIST not installed")
def test_decode_fashion_mnist_shapes():
    """Fashion-MNIST tops (t-shirt/shirt, pullover, coat) look alike, so category is weaker: >= 70 % clean."""
    images, labels = fashion_mnist.load()
    pools = fashion_mnist.pool_by_category(labels)
    rng = np.random.default_rng(8)
    n = 200
    cat, col, mat = rng.integers(0, 8, n), rng.integers(0, 8, n), rng.integers(0, 5, n)
    sils = [fashion_mnist.silhouette(images[pools[c][rng.integers(len(pools[c]))]]) for c in cat]
    dec = O.decode_attributes(_render(cat, col, mat, rng, silhouettes=sils), shapes="fashion_mnist")
    acc = OM.attribute_accuracy(dec, {"category": cat, "colour": col, "material": mat})
    assert acc["category_acc"] >= 0.7 and acc["colour_acc"] >= 0.95 and acc["material_acc"] >= 0.85, acc


def test_task_summaries_on_ground_truth(dataset):
    """PFITB/GOR summaries on the dataset's own item images: everything the oracle can check agrees."""
    ds, truth = dataset
    t, f = ds.split("test").take(np.arange(40)), ds.fitb("test").take(np.arange(40))
    load = lambda iid: np.asarray(Image.open(ds.image_file(int(iid))))  # noqa: E731
    gt = t.outfits[f.outfits == 0]
    caps = [json.dumps(ds.item_info[int(i)]["elements"]) for i in gt]
    got = OM.pfitb_oracle_metrics(np.stack([load(i) for i in gt]), f.uids, f.outfits, f.category, truth,
                                 captions=caps, gt_outfits=t.outfits)
    for key in ("category_match", "compat_rate", "gt_colour_match", "gt_material_match", "caption_colour_agreement",
                "caption_material_agreement", "caption_style_agreement"):
        assert got[key] >= 0.95, (key, got)
    assert 0.0 < got["compat_chance"] < got["compat_rate"] and got["caption_parse_rate"] == 1.0
    gor = OM.gor_oracle_metrics(np.stack([[load(i) for i in row] for row in t.outfits]), t.uids, t.category, truth)
    assert gor["category_match"] >= 0.95 and gor["compat_rate"] >= 0.9 and gor["generated_items"] == 160.0, gor
    with pytest.raises(ValueError, match="exactly one 0"):
        OM.pfitb_oracle_metrics(np.stack([load(i) for i in gt]), f.uids, t.outfits, f.category, truth)
    with pytest.raises(ValueError, match=r"\[N, 4, S, S, 3\]"):
        OM.gor_oracle_metrics(np.stack([load(i) for i in gt]), t.uids, t.category, truth)
