"""Feedback parsing and application, profiles, the SQLite store and the synthetic appearance rules (no model)."""
import json
import sqlite3

import numpy as np
import pytest

from dualfashion_jax.data.format import SafeDataset
from dualfashion_jax.data.images import ItemImages
from dualfashion_jax.data.synthetic import appearance as AP
from dualfashion_jax.data.synthetic import attributes as A
from dualfashion_jax.data.synthetic.make import make_dataset
from dualfashion_jax.data.synthetic.truth import load_truth
from dualfashion_jax.evaluators.oracle_metrics import appearance_fit, oracle_metrics
from dualfashion_jax.sessions import feedback as F, grounding as G, profile as P
from dualfashion_jax.sessions.simulate import Judgement, SimulatedUser
from dualfashion_jax.sessions.store import Store, StoreError

VOCAB = F.Vocabulary({k: A.VOCAB[k] for k in A.CAPTION_KEYS},
                     {k: {s: names[0] for names in A.SYNONYMS[k] for s in names} for k in A.CAPTION_KEYS})
PREF = {"Color": "red", "Material": "denim", "Design features": "plain", "Clothing Fashion Style": "casual"}


@pytest.mark.parametrize("text,want", [
    ("Color: blue", {"set": {"Color": "navy blue"}}),
    ("in blue", {"set": {"Color": "navy blue"}}),
    ("colour  NAVY", {"set": {"Color": "navy blue"}}),
    ("not: striped", {"avoid": {"Material": ["striped knit"]}}),
    ("less formal", {"avoid": {"Clothing Fashion Style": ["formal"]}}),
    ("more boho", {"set": {"Clothing Fashion Style": "bohemian"}}),
    ("more like #2", {"like": [2]}),
    ("show alternatives", {"alternatives": True}),
    ("Color: pink; no denim and style: sporty",
     {"set": {"Color": "pink", "Clothing Fashion Style": "sporty"}, "avoid": {"Material": ["denim"]}}),
])
def test_parse(text, want):
    empty = {"set": {}, "avoid": {}, "like": [], "alternatives": False}
    assert F.parse(text, VOCAB) == {**empty, **want}


@pytest.mark.parametrize("text,msg", [
    ("", "empty feedback"), ("size: large", "unknown attribute 'size'"), ("in qwerty", "unknown value 'qwerty'"),
    ("x" * 600, "at most 500"), ("Color: striped", "unknown Color value"),
])
def test_parse_errors(text, msg):
    with pytest.raises(F.FeedbackError, match=msg):
        F.parse(text, VOCAB)


def test_ambiguous_value_names_the_choices():
    v = F.Vocabulary({"Color": ("navy blue", "sky blue"), "Material": ("cotton",)})
    with pytest.raises(F.FeedbackError, match="ambiguous.*navy blue.*sky blue"):
        F.parse("in blue", v)
    assert F.parse("Color: sky blue", v)["set"] == {"Color": "sky blue"}


def test_apply_set_avoid_and_like():
    pref, avoid = F.apply(PREF, {}, F.parse("not: red, Material: cotton", VOCAB), [], VOCAB)
    assert pref["Color"] == "orange" and pref["Material"] == "cotton" and avoid == {"Color": ["red"]}  # next in vocab
    pref2, avoid2 = F.apply(pref, avoid, F.parse("Color: red", VOCAB), [], VOCAB)  # setting lifts the avoid
    assert pref2["Color"] == "red" and avoid2 == {}
    caps = ['{"Color": "jet black", "Material": "??", "Design features": "plain", "Clothing Fashion Style": "elegant"}']
    pref3, _ = F.apply(PREF, {}, F.parse("more like #1", VOCAB), caps, VOCAB)
    assert pref3 == {**PREF, "Color": "black", "Clothing Fashion Style": "formal"}  # unknown "??" keeps denim
    with pytest.raises(F.FeedbackError, match="#1..#1"):
        F.apply(PREF, {}, F.parse("like #3", VOCAB), caps, VOCAB)


def test_profile_normalize_and_fallback():
    cats = dict(enumerate(A.CATEGORIES))
    p = P.normalize({"preference": {"Color": "red"}, "appearance": {"height": "tall"}}, cats)
    assert P.preference_for(p, "dress") == {"Color": "red", "Material": "Unknown", "Design features": "Unknown",
                                            "Clothing Fashion Style": "Unknown"}
    with pytest.raises(ValueError, match="unknown field"):
        P.normalize({"prefs": {}}, cats)
    with pytest.raises(ValueError, match=r"profile.preference\['dress'\]: unknown key"):
        P.normalize({"preference": {"dress": {"Size": "M"}}}, cats)


def test_appearance_rules_and_fit():
    a = {"body_shape": "apple", "height": "petite", "skin_tone": "fair"}
    bad = AP.unsuited(a)
    assert bad == {"colour": {A.COLORS.index("yellow"), A.COLORS.index("orange")},
                   "material": {A.MATERIALS.index("striped knit"), A.MATERIALS.index("polka dot chiffon")}}
    col = np.array([A.COLORS.index(c) for c in ("red", "yellow", "red", "black")])
    mat = np.array([A.MATERIALS.index(m) for m in ("cotton", "cotton", "striped knit", "denim")])
    np.testing.assert_array_equal(AP.suits(a, col, mat), [True, False, False, True])
    assert AP.suits({}, np.array([-1]), np.array([0])).tolist() == [False]  # undecodable never fits
    with pytest.raises(ValueError, match="skin_tone"):
        AP.check({"skin_tone": "green"})
    assert AP.draw(0, 5) == AP.draw(0, 5) and AP.draw(0, 5) != AP.draw(1, 5)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("appearance")
    return (make_dataset(root / "plain", seed=3, num_users=6, verbose=False),
            make_dataset(root / "app", seed=3, num_users=6, appearance=True, verbose=False))


def test_appearance_is_opt_in_and_leaves_the_world_unchanged(datasets):
    plain, app = datasets
    files = sorted(p.relative_to(plain) for p in plain.rglob("*") if p.is_file())
    for rel in files:
        if rel.name != "meta.json":
            assert (plain / rel).read_bytes() == (app / rel).read_bytes(), rel
    assert json.loads((app / "meta.json").read_text())["generator"]["appearance"] is True
    assert "appearance" not in json.loads((plain / "meta.json").read_text())["generator"]
    assert SafeDataset(plain).appearance == {}
    got = SafeDataset(app).appearance
    assert sorted(got) == list(range(6)) and got[2] == AP.draw(3, 6)[2]
    (app / "text" / "appearance.json").write_text('{"0": {"height": 3}}')
    with pytest.raises(Exception, match="appearance.json: user 0"):
        _ = SafeDataset(app).appearance
    (app / "text" / "appearance.json").write_text(json.dumps({str(u): a for u, a in got.items()}))


def test_appearance_fit_metric_and_simulated_user(datasets):
    _, app = datasets
    truth, apps = load_truth(app), SafeDataset(app).appearance
    uid, cat = 1, 0
    good = [c for c in range(len(A.COLORS)) if c not in AP.unsuited(apps[uid])["colour"]][0]
    bad = sorted(AP.unsuited(apps[uid])["colour"])[0]
    dec = {"colour": np.array([good, bad]), "material": np.array([0, 0])}
    fit_mat = AP.suits(apps[uid], np.array([good]), np.array([0]))[0]
    out = appearance_fit(dec, np.array([uid, uid]), np.array([cat, cat]), apps, truth)
    assert out["appearance_fit"] == pytest.approx(0.5 * fit_mat) and 0 < out["appearance_fit_chance"] < 1
    assert appearance_fit(dec, np.array([uid, uid]), np.array([cat, cat]), {}, truth) == {}
    user = SimulatedUser(truth, uid, apps[uid])
    fc, fm = user.favourite(cat)
    j = Judgement(np.array([bad, fc]), np.array([fm, fm]), np.array([cat, cat]), np.array([bad == fc, True]),
                  np.array([True, True]), np.array([False, True]))
    names = {cat: A.CATEGORIES[cat]}
    wrong = {A.CATEGORIES[cat]: {**PREF, "Color": A.COLORS[(fc + 1) % 8], "Material": A.MATERIALS[fm]}}
    text = user.feedback([(cat, j)], wrong, names)  # #2 shows the favourite colour and suits: point at it
    assert text.startswith(f"more like #2, Color: {A.COLORS[fc]}") and (bad == fc or f"not: {A.COLORS[bad]}" in text)
    right = {A.CATEGORIES[cat]: {**PREF, "Color": A.COLORS[fc], "Material": A.MATERIALS[fm]}}
    ok = Judgement(np.array([fc]), np.array([fm]), np.array([cat]), np.array([True]), np.array([True]),
                   np.array([True]))
    assert user.feedback([(cat, ok)], right, names) == "more like #1"
    other = A.COLORS[(fc + 1) % 8]  # "more like #1" would copy #1's caption colour: restate the favourite
    assert user.feedback([(cat, ok)], right, names, [f'{{"Color": "{other}"}}']) == \
        f"more like #1, Color: {A.COLORS[fc]}"
    unfit = Judgement(np.array([fc]), np.array([fm]), np.array([cat]), np.array([True]), np.array([True]),
                      np.array([False]))
    assert user.feedback([(cat, unfit)], right, names) == "alternatives"
    F.parse(text, VOCAB)  # what the simulated user says, the parser reads


def test_store_round_trip_and_version_check(tmp_path):
    s = Store(tmp_path / "a.db")
    s.add_user("u1", {"name": "x"}, "t0")
    s.add_session({"id": "s1", "user_id": "u1", "task": "pfitb", "outfit_id": "test:3", "outfit": {"items": []},
                   "profile": {}, "settings": {}, "created": "t1"})
    cand = {"index": 0, "seed": 7, "caption": "c", "image_png": b"\x89PNG", "shop": [{"item_id": "4"}], "category": "x",
            "sample": 0}
    rnd = {"number": 1, "feedback": None, "parsed": {}, "preference": {"a": 1}, "settings": {}, "created": "t2"}
    s.add_round("s1", rnd, [cand])
    with pytest.raises(sqlite3.IntegrityError):
        s.add_round("s1", rnd, [cand])  # a round number is written once; the failed write leaves nothing behind
    s.close()
    again = Store(tmp_path / "a.db")
    got = again.session("s1")
    assert got["rounds"][0]["candidates"] == [cand] and got["rounds"][0]["preference"] == {"a": 1}
    assert again.sessions("u1")[0]["rounds"] == 1 and again.session("nope") is None
    con = sqlite3.connect(tmp_path / "a.db")
    con.execute("PRAGMA user_version = 7")
    con.close()
    with pytest.raises(StoreError, match="schema version 7"):
        Store(tmp_path / "a.db")


def test_rerank_by_grounded_attributes():
    near = [{"Color": "red", "Material": "denim"}, {"Color": "pink", "Material": "denim"},
            {"Color": "pink", "Material": "cotton"}, {"Color": "pink", "Material": "striped knit"}, {}]
    pref = {"Color": "pink", "Material": "cotton"}
    assert G.rerank(near, pref, {}) == [2, 1, 3, 0, 4]  # 2 hits, then 1 hit in sampling order, then 0
    assert G.rerank(near, pref, {"Material": ["denim"]}) == [2, 3, 1, 4, 0]  # an avoided value costs 1


def test_grounding_nearest_finds_the_item_itself(tmp_path):
    root = make_dataset(tmp_path / "d", seed=1, num_users=2, verbose=False)
    ds = SafeDataset(root)
    cat = G.Catalogue(ds, 32)
    img = ItemImages(ds, 32)(5)
    top = cat.nearest(img, int(ds.iid_category[5]), 3)
    assert top[0][0] == 5 and top[0][1] == pytest.approx(1.0, abs=1e-5) and top[0][1] >= top[1][1] >= top[2][1]
    assert all(ds.iid_category[i] == ds.iid_category[5] for i, _ in top)
    with pytest.raises(ValueError, match="category 99"):
        cat.nearest(img, 99, 1)


def test_oracle_metrics_report_appearance_fit_only_with_appearance(datasets):
    out = {}
    for name, root in zip(("plain", "app"), datasets):
        ds = SafeDataset(root)
        f, t = ds.fitb("test"), ds.split("test")
        blank = f.outfits == 0
        gt = t.outfits[blank]  # [N] the blanks' ground-truth items
        out[name] = oracle_metrics(ItemImages(ds, 32).many(gt), data_dir=root, uids=f.uids,
                                   categories=f.category[blank], gt_iids=gt, captions=None, outfits=f.outfits,
                                   outfit_gen_index=np.where(blank, np.arange(len(gt))[:, None], -1))
    assert "oracle_appearance_fit" not in out["plain"]
    assert {k: v for k, v in out["app"].items() if "appearance" not in k} == out["plain"]
    truth, apps = load_truth(datasets[1]), SafeDataset(datasets[1]).appearance
    t = SafeDataset(datasets[1]).split("test")
    gt_items = t.outfits[SafeDataset(datasets[1]).fitb("test").outfits == 0]
    want = np.mean([AP.suits(apps[int(u)], truth.item["colour"][[i]], truth.item["material"][[i]])[0]
                    for u, i in zip(t.uids, gt_items)])
    assert out["app"]["oracle_appearance_fit"] == pytest.approx(want)  # the GT renders decode to their attributes
