"""The web API over the real `SessionEngine` (tiny random-weight model): the engine's errors reach the client as
4xx with its message, and two sessions driven concurrently over HTTP keep their own rounds, equal to a sequential
replay of each session's log (so neither saw the other's preference, seed or outfit) although their first rounds
ran as one sampler batch."""
import base64
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient

from generation_support import make_workdir, make_world
from web_support import decode_png

from dualfashion_jax.data.format import SafeDataset
from dualfashion_jax.data.synthetic.make import make_dataset
from dualfashion_jax.generation.bundle import load_bundle
from dualfashion_jax.sessions.engine import SessionEngine
from dualfashion_jax.sessions.store import Store
from dualfashion_jax.web.app import create_app

FAST = {"steps": 2, "caption_steps": 2}  # the sessions tests' settings: their compiled programs are reused


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = make_world(tmp_path_factory.mktemp("web_engine"), num_users=3)
    make_dataset(root / "data", seed=0, image_size=32, num_users=3, appearance=True, verbose=False)
    bundle = load_bundle(make_workdir(root, root / "wd"), data=str(root / "data"))
    return SessionEngine(bundle, SafeDataset(root / "data"), Store(root / "s.db"), max_candidates=3, settings=FAST)


@pytest.fixture(scope="module")
def client(engine):
    with TestClient(create_app(engine, batch_window_s=0.5)) as c:  # a wide window: concurrent rounds batch
        yield c


def _pixels(candidate: dict) -> np.ndarray:
    return decode_png(base64.b64decode(candidate["image"].split(",", 1)[1]))


def test_engine_errors_are_4xx_with_its_message(client):
    outfit = client.get("/api/users/u0/outfits?limit=1").json()[0]
    assert outfit["id"].startswith("test:") and client.get(f"/api/items/{outfit['items'][0]}.png").status_code == 200
    cases = [
        (client.get("/api/users/nobody/outfits"), 404, "unknown user 'nobody'"),
        (client.post("/api/sessions", json={"user_id": "u0", "task": "pfitb", "outfit_id": "test:99999"}), 404,
         "unknown outfit 'test:99999'"),
        (client.get("/api/items/abc.png"), 404, "unknown catalogue item: item id 'abc' is not an integer"),
        (client.get("/api/sessions/0000"), 404, "unknown session '0000'"),
        (client.post("/api/users", json={"profile": {"preference": {"Colour": "red"}}}), 400,
         "profile.preference: unknown categor"),
    ]
    sid = client.post("/api/sessions", json={"user_id": "u0", "task": "pfitb", "outfit_id": outfit["id"]}).json()["id"]
    cases += [
        (client.post(f"/api/sessions/{sid}/rounds", json={"feedback": "@@@", "n": 3}), 400, "feedback: "),
        (client.post(f"/api/sessions/{sid}/rounds", json={"feedback": "more like #1", "n": 3}), 400, "feedback: "),
        (client.post(f"/api/sessions/{sid}/rounds", json={"n": 4}), 413, "at most 3 per round"),
    ]
    for r, status, message in cases:
        assert r.status_code == status and message in r.json()["detail"], (r.status_code, r.text)
    assert client.get(f"/api/sessions/{sid}").json()["rounds"] == []


def test_replay_samples_a_batched_round_at_its_row(engine):
    """Rounds of two sessions in one sampler batch store their rows; replay samples each at its row, so the second
    row's pixels are bit-equal too (at row 0 instead, 3 of 4 such pairs differed by 1 in a pixel: XLA:CPU rounds
    the rows of one batch apart)."""
    for _ in range(3):
        a, b = engine.start("u1", "pfitb"), engine.start("u2", "pfitb")
        ra, rb = engine.round_many([(a.id, None, 3, None), (b.id, None, 3, None)])
        assert (ra.settings["chain"], rb.settings["chain"], rb.settings["chains"]) == (0, 1, 2)
        for sid, live in ((a.id, ra), (b.id, rb)):
            again = engine.replay(sid).rounds[-1]
            assert [c.image_png for c in again.candidates] == [c.image_png for c in live.candidates]
            assert [c.caption for c in again.candidates] == [c.caption for c in live.candidates]


@pytest.mark.slow  # 4 rounds + their replays (~1 min on 2 CPU cores)
def test_concurrent_sessions_do_not_mix(client, engine):
    colours = ("pink", "green")
    users = [client.post("/api/users", json={"profile": {"name": c, "preference": {"Color": c}}}).json()["id"]
             for c in colours]
    outfits = [client.get(f"/api/users/{u}/outfits?limit=2").json()[i] for i, u in enumerate(users)]
    sids = [client.post("/api/sessions", json={"user_id": u, "task": "pfitb", "outfit_id": o["id"]}).json()["id"]
            for u, o in zip(users, outfits)]
    feedback = [[None, "Color: red, not: denim"], [None, "more like #2"]]
    status: list[list[int]] = [[], []]

    def drive(k):
        for fb in feedback[k]:
            status[k].append(client.post(f"/api/sessions/{sids[k]}/rounds", json={"feedback": fb, "n": 3}).status_code)

    threads = [threading.Thread(target=drive, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert status == [[200] * 2, [200] * 2]
    assert sorted(sids) in [sorted(b) for b in client.app.state.batcher.batches]  # rounds 1: one batch, 2 chains
    for k, sid in enumerate(sids):
        s = client.get(f"/api/sessions/{sid}").json()
        assert s["user_id"] == users[k] and [r["feedback"] for r in s["rounds"]] == feedback[k]
        assert [i["item_id"] for i in s["outfit"] if i["item_id"]] == outfits[k]["items"]
        assert s["rounds"][0]["settings"]["chains"] == 2 and s["rounds"][1]["settings"]["chains"] == 1
        target = s["rounds"][0]["preference"]["targets"][outfits[k]["blank_category"]]
        assert target["Color"] == colours[k]
        assert client.get(f"/api/sessions/{sid}/progress").json()["state"] == "done"
        replay = engine.replay(sid)
        for got, want in zip(s["rounds"], replay.rounds):
            assert got["preference"] == want.preference and got["settings"]["seed"] == want.settings["seed"]
            for c, w in zip(got["candidates"], want.candidates):
                np.testing.assert_array_equal(_pixels(c), decode_png(w.image_png))
                assert c["caption"] == w.caption
    red = client.get(f"/api/sessions/{sids[0]}").json()["rounds"][1]["preference"]
    assert red["targets"][outfits[0]["blank_category"]]["Color"] == "red" and red["avoid"] == {"Material": ["denim"]}
