"""The synthetic outfits dataset: determinism, speed, safe-format structure, rules, captions, preferences."""
import hashlib
import json
import re
import time
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from dualfashion_jax.data.format import SafeDataset
from dualfashion_jax.data.validate import validate_dataset
from dualfashion_jax.data.synthetic import attributes as A
from dualfashion_jax.data.synthetic import captions as C
from dualfashion_jax.data.synthetic import load_truth, make_dataset, rule_compatible, rule_violations
from dualfashion_jax.data.synthetic import render, world

TIME_LIMIT_S = 20.0  # default dataset on a loaded 2-core CPU


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "ds"
    t0 = time.perf_counter()
    make_dataset(out, seed=0, verbose=False)
    return out, time.perf_counter() - t0


def _fingerprint(root) -> dict[str, str]:
    """Content hash per file (npz by array contents: zip entries carry timestamps)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        if p.suffix == ".npz":
            with np.load(p) as z:
                h = hashlib.sha256(b"".join(k.encode() + z[k].tobytes() + str(z[k].dtype).encode()
                                            for k in sorted(z.files)))
        else:
            h = hashlib.sha256(p.read_bytes())
        out[str(p.relative_to(root))] = h.hexdigest()
    return out


def test_default_is_fast_and_deterministic(built, tmp_path):
    out, seconds = built
    assert seconds < TIME_LIMIT_S, f"default dataset took {seconds:.1f} s"
    again = make_dataset(tmp_path / "again", seed=0, verbose=False)
    a, b = _fingerprint(out), _fingerprint(again)
    assert a == b and len(a) > 960
    other = _fingerprint(make_dataset(tmp_path / "other", seed=1, num_users=20, verbose=False))
    assert other["splits/test.npz"] != a["splits/test.npz"]


def test_safe_format_structure(built):
    out, _ = built
    ds = SafeDataset(out)
    rep = validate_dataset(ds)  # the data part's cross-file checks (ids, categories, FITB alignment, images)
    assert not rep.missing_images and "fitb_test_candidates" in rep.checked
    assert ds.meta["source"] == "synthetic" and ds.num_items == 960 and ds.image_size == 32
    assert ds.categories == dict(enumerate(A.CATEGORIES))
    cat_of = ds.iid_category
    img = np.asarray(Image.open(ds.image_file(1)))
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8 and (img[0, 0] == 255).all()
    sizes = {}
    for split in ("train", "valid", "test"):
        t, f, c = ds.split(split), ds.fitb(split), ds.candidates(split)
        sizes[split] = len(t)
        assert (cat_of[t.outfits] == t.category).all()
        assert all(len(set(row)) == 4 for row in t.category.tolist())
        blank = f.outfits == 0
        assert (blank.sum(1) == 1).all() and (f.outfits[~blank] == t.outfits[~blank]).all()
        assert (f.uids == t.uids).all() and (f.category == t.category).all()
        assert (c.candidates[:, 0] == t.outfits[blank]).all() and (c.candidates > 0).all()
        assert all(len(set(r)) == 5 for r in c.candidates.tolist())
        hist = ds.history(split)
        assert all(1 <= len(v) <= 10 for per in hist.values() for v in per.values())
        assert all(int(cc) in hist[int(u)] for u, cc in zip(t.uids, t.category[blank]))
    assert sizes["test"] == 160 and 100 <= sizes["test"] <= 200 and sizes["train"] > 900
    blanks = np.argmax(ds.fitb("train").outfits == 0, axis=1)
    assert np.bincount(blanks, minlength=4).min() > 0.15 * sizes["train"]  # uniform slot
    oids = np.concatenate([ds.split(s).oids for s in ("train", "valid", "test")])
    assert len(np.unique(oids)) == len(oids)


def test_every_outfit_obeys_the_rules(built):
    out, _ = built
    ds, truth = SafeDataset(out), load_truth(out)
    for split in ("train", "test"):
        for row in ds.split(split).outfits[:400]:
            attrs = [{k: int(truth.item[k][i]) for k in ("category", "colour", "material")} for i in row]
            assert rule_compatible(attrs), (row, rule_violations(*zip(*[a.values() for a in attrs])))


def test_rules_by_hand():
    # t-shirt red cotton (sporty), pants orange cotton (sporty), shoe black striped (sporty), bag navy denim
    cats, cols, mats = [0, 1, 5, 6], [0, 1, 7, 4], [0, 0, 2, 1]
    assert rule_violations(cats, cols, mats) == []
    assert rule_violations([0, 2, 5, 6], cols, mats) == ["categories/roles not distinct"]  # two tops
    assert rule_violations(cats, [0, 3, 7, 4], mats) == ["colour clash"]  # red + green
    assert rule_violations(cats, cols, [0, 0, 2, 3]) == ["more than one bold pattern"]  # navy plaid: formal
    assert rule_violations(cats, cols, [0, 1, 2, 3]) == ["more than one bold pattern", "inconsistent style"]
    assert rule_violations(cats, [5, 6, 7, 4], [0, 0, 0, 1]) == ["inconsistent style"]  # boho, boho, formal, casual
    with pytest.raises(ValueError, match="4 items"):
        rule_violations([0, 1], [0, 1], [0, 0])
    with pytest.raises(ValueError, match="colour"):
        rule_compatible([{"category": 0, "colour": 9, "material": 0}] * 4)
    with pytest.raises(ValueError, match="'material'"):
        rule_compatible([{"category": 0, "colour": 1}] * 4)


def test_captions_match_truth(built):
    out, _ = built
    ds, truth = SafeDataset(out), load_truth(out)
    info, stage1, aug = ds.item_info, ds.stage1, ds.augmented
    assert len(info) == len(stage1) == len(aug) == 960
    for rec in stage1[:50]:
        iid = rec["iid"]
        full = json.loads(rec["caption"])
        assert list(full) == ["Category", "Subcategory", "Color", "Material", "Silhouette", "Design features",
                              "Clothing Fashion Style"]
        assert full["Category"] == A.CATEGORIES[truth.item["category"][iid]]
        elements = info[iid]["elements"]
        assert list(elements) == list(A.CAPTION_KEYS)
        for key, field in zip(A.CAPTION_KEYS, ("colour", "material", "feature", "style")):
            assert A.parse_value(key, elements[key]) == truth.item[field][iid]
            for variant in aug[iid]:  # paraphrases/permutations keep the attribute
                assert A.parse_value(key, C.parse_caption(variant)[key]) == truth.item[field][iid]
            # the label-mask regex of spec §3 finds the value in the raw string
            assert re.search(rf'"{key}"\s*:\s*"({re.escape(elements[key])})"', aug[iid][0])
        assert A.COLORS[truth.item["colour"][iid]] in rec["re_caption"]
        assert truth.item["style"][iid] == A.STYLE_TABLE[truth.item["colour"][iid], truth.item["material"][iid]]
    assert len({len(v) for v in aug.values()}) == 1 and len(set(aug[1])) == 4


def test_preferences_are_history_frequencies(built):
    out, _ = built
    ds, truth = SafeDataset(out), load_truth(out)
    prefs, hist = ds.preference("test"), ds.history("test")
    assert prefs == ds.preference("train")
    for uid in list(hist)[:20]:
        for cid, items in hist[uid].items():
            freq = prefs[uid][cid]["Frequency"]
            assert list(freq) == list(A.CAPTION_KEYS)
            counts = Counter(int(truth.item["colour"][i]) for i in items)
            assert counts[A.COLORS.index(freq["Color"])] == max(counts.values())


def test_preferences_carry_signal(built):
    """The hidden favourite colour shows in the history text and in the test blanks far above chance."""
    out, _ = built
    ds, truth = SafeDataset(out), load_truth(out)
    prefs, t, f = ds.preference("test"), ds.split("test"), ds.fitb("test")
    blank = f.outfits == 0
    gt, cats = t.outfits[blank], t.category[blank]
    fav = truth.fav_colour[truth.user_rows(t.uids), cats]
    text_says = np.asarray([A.COLORS.index(prefs[int(u)][int(c)]["Frequency"]["Color"]) for u, c in zip(t.uids, cats)])
    chance = truth.colour_prior[cats, fav].mean()
    assert (text_says == fav).mean() > 0.7
    assert (truth.item["colour"][gt] == fav).mean() > 2.5 * chance
    assert 0.05 < chance < 0.3


def test_render_contract():
    a = render.render_item(3, 2, 4, 1, render.Jitter(1.02, 0.01, -0.01, (3.0, -2.0, 1.0)), size=32)
    b = render.render_item(3, 2, 4, 1, render.Jitter(1.02, 0.01, -0.01, (3.0, -2.0, 1.0)), size=32)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8 and (a == b).all()
    assert (a[:2] == 255).all() and (a[:, :2] == 255).all()  # white margin, garment centred
    big = render.render_item(3, 2, 4, 1, size=64)
    assert big.shape == (64, 64, 3)
    for cat in range(len(A.CATEGORIES)):  # every category covers a reasonable part of the image
        cover = (render.render_item(cat, 7, 0, 0) < 128).all(-1).mean()
        assert 0.15 < cover < 0.7, (A.CATEGORIES[cat], cover)
    with pytest.raises(ValueError, match="image size"):
        render.render_item(0, 0, 0, 0, size=8)
    with pytest.raises(ValueError, match="material index 7"):
        render.render_item(0, 0, 7, 0)
    with pytest.raises(ValueError, match="category index"):
        render.render_item(9, 0, 0, 0)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        make_dataset(tmp_path / "a", image_size=8, verbose=False)
    with pytest.raises(ValueError, match="shapes"):
        make_dataset(tmp_path / "b", shapes="sketch", verbose=False)
    with pytest.raises(ValueError, match="num_users"):
        make_dataset(tmp_path / "c", num_users=0, verbose=False)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not a synthetic dataset"):
        make_dataset(tmp_path / "mine", num_users=5, verbose=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_world_options_and_64px(tmp_path):
    w = world.make_world(seed=3, num_users=12, items_per_combo=1, train_outfits=(2, 3))
    assert len(w.catalogue) == 320 and len(w.splits["test"].uids) == 12
    assert 24 <= len(w.splits["train"].uids) <= 36
    out = make_dataset(tmp_path / "ds64", seed=3, image_size=64, num_users=12, items_per_combo=1,
                       train_outfits=(2, 3), verbose=False)
    ds = SafeDataset(out)
    assert np.asarray(Image.open(ds.image_file(5))).shape == (64, 64, 3)
    assert (ds.split("test").outfits == w.splits["test"].outfits).all()  # the world does not depend on the size
