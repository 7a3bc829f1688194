"""The session engine on a tiny random-weight model: rounds, feedback, persistence across a restart, replay,
thread safety and the errors the web page relies on."""
import io
import sqlite3
import threading

import numpy as np
import pytest
from PIL import Image

from generation_support import make_session_world

from dualfashion_jax.cli import main as cli_main
from dualfashion_jax.data.format import SafeDataset
from dualfashion_jax.generation.api import recommend, recommend_batch
from dualfashion_jax.sessions import engine as engine_lib
from dualfashion_jax.sessions.engine import FeedbackError, SessionEngine, UnknownUserError, task_settings
from dualfashion_jax.text.tokenizer import UNKNOWN
from dualfashion_jax.sessions.store import Store, StoreError

FAST = {"steps": 2, "caption_steps": 2}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_session_world(tmp_path_factory.mktemp("sessions"))


@pytest.fixture()
def engine(world, tmp_path):
    root, _, bundle = world
    return SessionEngine(bundle, SafeDataset(root / "data"), Store(tmp_path / "s.db"), max_candidates=4, settings=FAST)


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def test_pfitb_rounds_feedback_restart_and_replay(world, engine, tmp_path):
    users = engine.users()
    assert [u["id"] for u in users] == ["u0", "u1", "u2"]
    assert set(users[0]["profile"]["appearance"]) == {"body_shape", "height", "skin_tone"}
    outfit = engine.outfits("u1")[0]
    assert len(outfit["items"]) == 3 and outfit["id"].startswith("test:")
    s = engine.start("u1", "pfitb", outfit["id"])
    assert s.outfit.count("") == 1 and [i for i in s.outfit if i] == outfit["items"]
    seen = []
    r1 = engine.round(s.id, n=3, on_progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (3, 3) and len(r1.candidates) == 3
    imgs = [_decode(c.image_png) for c in r1.candidates]
    assert imgs[0].shape == (32, 32, 3) and np.abs(imgs[0].astype(int) - imgs[1]).max() > 10  # diverse samples
    assert all(len(c.shop) == 3 and c.shop[0]["score"] >= c.shop[-1]["score"] for c in r1.candidates)
    blank_cat = outfit["blank_category"]
    assert r1.preference["targets"][blank_cat] == engine.profile("u1")["preference"][blank_cat]
    r2 = engine.round(s.id, "Color: pink, not: denim", n=3)
    pref = r2.preference["targets"][blank_cat]
    assert pref["Color"] == "pink" and pref["Material"] != "denim" and r2.preference["avoid"] == {"Material": ["denim"]}
    assert r2.settings["seed"] != r1.settings["seed"]
    r3 = engine.round(s.id, "alternatives", n=3)  # same preference, a new round key: other samples
    assert r3.preference == r2.preference and r3.parsed["alternatives"]
    assert np.abs(_decode(r3.candidates[0].image_png).astype(int) - _decode(r2.candidates[0].image_png)).max() > 10
    with pytest.raises(FeedbackError, match="candidates #1..#3"):
        engine.round(s.id, "more like #7", n=3)
    with pytest.raises(FeedbackError, match="unknown value"):
        engine.round(s.id, "in qwerty")
    with pytest.raises(ValueError, match="1..4"):
        engine.round(s.id, n=5)
    # a restart: a new engine on the same database sees the same session, byte for byte
    again = SessionEngine(world[2], SafeDataset(world[0] / "data"), Store(tmp_path / "s.db"), settings=FAST)
    stored = again.session(s.id)
    assert len(stored.rounds) == 3 and stored.rounds[1].feedback == "Color: pink, not: denim"
    assert [c.image_png for c in stored.rounds[0].candidates] == [c.image_png for c in r1.candidates]
    replayed = again.replay(s.id)
    for a, b in zip(replayed.rounds, stored.rounds):
        assert a.preference == b.preference and [c.caption for c in a.candidates] == [c.caption for c in b.candidates]
        assert [c.image_png for c in a.candidates] == [c.image_png for c in b.candidates]
    assert again.sessions("u1") == [{"id": s.id, "user_id": "u1", "task": "pfitb", "outfit_id": outfit["id"],
                                     "created": s.created, "rounds": 3}]


def test_gor_round_and_created_user(engine):
    uid = engine.create_user({"name": "ann", "preference": {"Color": "black"},
                              "appearance": {"skin_tone": "deep"}})
    assert any(u["id"] == uid for u in engine.users())
    s = engine.start(uid, "gor")
    assert s.outfit == ["", "", "", ""] and len(s.categories) == 4
    r = engine.round(s.id, n=2)
    assert all(p["Color"] == "black" for p in r.preference["targets"].values())
    assert _decode(r.candidates[0].image_png).shape == (32, 128, 3)
    assert [d["slot"] for d in r.candidates[0].shop] == [0, 1, 2, 3]
    r2 = engine.round(s.id, "less black")
    assert all(p["Color"] != "black" for p in r2.preference["targets"].values())


def test_recommend_batch_rows_equal_single_requests(world):
    """GOR batches a slot's n candidates: row c of one batch = the single request with outfit c and key c."""
    bundle = world[2]
    gen = task_settings("gor", FAST)
    item = np.random.default_rng(0).integers(0, 256, (40, 40, 3), np.uint8)
    outfits, keys = [[], [item], [item, item[::-1]]], [(1, 7), (2, 7), (3, 7)]
    imgs, caps = recommend_batch(bundle, {"Color": "pink"}, "dress", outfits, keys, seed=gen.seed, settings=gen)
    assert imgs.shape == (3, 1, 32, 32, 3) and len(caps) == 3
    for c in range(3):
        one, cap = recommend(bundle, {"Color": "pink"}, "dress", outfits[c], key=keys[c], seed=gen.seed, settings=gen)
        assert np.abs(imgs[c].astype(int) - one.astype(int)).max() <= 1 and caps[c] == cap  # batch-size numerics
    assert np.abs(imgs[0].astype(int) - imgs[1]).max() > 10
    with pytest.raises(ValueError, match="as many outfits as keys"):
        recommend_batch(bundle, {}, "dress", [[]], [(1, 7), (2, 7)])


def test_partly_stated_preference_reaches_the_model_filled(engine, monkeypatch):
    """A cold user's "Color: x" goes to the model with the category's typical values, not 3 x "Unknown"."""
    seen = []

    def fake(bundle, requests, num_images, *args, **kw):
        seen.append((dict(requests[0].preference), requests[0].appearance))
        return np.zeros((len(requests), num_images, 32, 32, 3), np.uint8), [["{}"] * num_images] * len(requests)
    monkeypatch.setattr(engine_lib, "recommend_many", fake)
    s = engine.start(engine.create_user({"name": "cold"}), "pfitb")
    engine.round(s.id, n=1)
    assert seen[-1] == ({k: UNKNOWN for k in seen[-1][0]}, None)  # nothing stated: all "Unknown"
    r = engine.round(s.id, "Color: pink", n=1)
    cat = s.categories[s.outfit.index("")]
    assert r.preference["targets"][cat]["Material"] == UNKNOWN and r.settings["fill_unknown"] is True
    assert seen[-1][0] == {**engine.typical[cat], "Color": "pink"} and UNKNOWN not in seen[-1][0].values()
    engine.fill_unknown = False
    engine.round(s.id, "alternatives", n=1)
    assert seen[-1][0]["Material"] == UNKNOWN and seen[-1][0]["Color"] == "pink"


@pytest.mark.slow  # ~40 s on the loaded 2-core CPU: two more sampler compiles (n=2, oversampled n=6)
def test_errors_and_concurrent_sessions(engine, tmp_path):
    with pytest.raises(UnknownUserError):
        engine.start("nobody", "pfitb")
    with pytest.raises(ValueError, match="task"):
        engine.start("u0", "fitb")
    with pytest.raises(ValueError, match="appearance.height"):
        engine.create_user({"appearance": {"height": "giant"}})
    with pytest.raises(ValueError, match="unknown categor"):
        engine.create_user({"preference": {"hats": {"Color": "red"}}})
    a, b = engine.start("u0", "pfitb"), engine.start("u2", "pfitb")
    errors = []

    def run(sid, text):
        try:
            engine.round(sid, n=2)
            engine.round(sid, text, n=2)
        except Exception as e:  # noqa: BLE001  (surfaced by the assert below)
            errors.append(e)

    threads = [threading.Thread(target=run, args=(a.id, "Color: red")),
               threading.Thread(target=run, args=(b.id, "in green"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    ra, rb = engine.session(a.id).rounds, engine.session(b.id).rounds
    assert [r.number for r in ra] == [1, 2] == [r.number for r in rb]
    assert next(iter(ra[1].preference["targets"].values()))["Color"] == "red"
    assert next(iter(rb[1].preference["targets"].values()))["Color"] == "green"
    engine.oversample = 3  # sample 6, keep the 2 whose nearest catalogue items match the stated preference best
    r = engine.round(a.id, "Color: red", n=2)
    assert r.settings["oversample"] == 3 and len(r.candidates) == 2
    assert len({c.sample for c in r.candidates}) == 2 and all(0 <= c.sample < 6 for c in r.candidates)
    info = SafeDataset(engine.ds.root).item_info
    hits = [info[int(c.shop[0]["item_id"])]["elements"]["Color"] == "red" for c in r.candidates]
    assert hits == sorted(hits, reverse=True)
    again = engine.replay(a.id).rounds[-1]
    assert [c.image_png for c in again.candidates] == [c.image_png for c in r.candidates]
    bad = tmp_path / "other.db"
    sqlite3.connect(bad).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(StoreError, match="schema version 0"):
        Store(bad)


@pytest.mark.slow  # ~70 s on the loaded 2-core CPU: the CLI loads the model again and compiles its sampler
def test_session_cli(world, tmp_path, capsys):
    root, wd, _ = world
    base = ["session", "--checkpoint", str(wd), "--data", str(root / "data"), "--db", str(tmp_path / "c.db")]
    assert cli_main(base[:1] + ["create"] + base[1:] + ["--user", "u2"]) == 0
    sid = capsys.readouterr().out.strip().splitlines()[-1]
    fast = ["--n", "2", "--set", "steps=2", "--set", "caption_steps=2"]
    assert cli_main(base[:1] + ["round"] + base[1:] + ["--id", sid] + fast) == 0
    assert cli_main(base[:1] + ["round"] + base[1:] + ["--id", sid, "--feedback", "in purple",
                                                       "--save-dir", str(tmp_path / "png")] + fast) == 0
    assert len(list((tmp_path / "png").glob("*.png"))) == 2
    assert cli_main(base[:1] + ["show"] + base[1:] + ["--id", sid]) == 0
    out = capsys.readouterr().out
    assert "round 2: feedback 'in purple'" in out and '"Color": "purple"' in out
    assert cli_main(base[:1] + ["replay"] + base[1:] + ["--id", sid] + fast[2:]) == 0
    assert "identical candidates" in capsys.readouterr().out
    assert cli_main(base[:1] + ["round"] + base[1:] + ["--id", sid, "--feedback", "size: L"] + fast) == 2
    assert "unknown attribute 'size'" in capsys.readouterr().err
