"""The web API over an in-memory engine: a whole session, every 4xx path with its message, progress while a round
samples, and two concurrent sessions that keep their own rounds."""
import base64
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from web_support import COLOURS, FakeEngine, decode_png

from dualfashion_jax.cli import COMMANDS
from dualfashion_jax.web import cli as serve_cli
from dualfashion_jax.web.app import create_app


@pytest.fixture()
def engine():
    return FakeEngine(max_candidates=8)


@pytest.fixture()
def client(engine):
    with TestClient(create_app(engine)) as c:
        yield c


def _image(data_url: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert data_url.startswith(prefix)
    return decode_png(base64.b64decode(data_url[len(prefix):]))


def _new_user(client, colour: str) -> str:
    r = client.post("/api/users", json={"profile": {"name": colour, "preference": {"Color": colour}}})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _start(client, user_id: str, task: str = "pfitb", outfit_id="o1") -> str:
    r = client.post("/api/sessions", json={"user_id": user_id, "task": task, "outfit_id": outfit_id})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_page_and_its_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<script src="/static/app.js"' in page.text and 'id="feedback"' in page.text
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    assert client.get("/api/health").json() == {"ok": True, "max_candidates": 8, "tasks": ["pfitb", "gor"]}
    vocab = client.get("/api/vocabulary").json()
    assert vocab["preference_keys"][0] == "Color" and "skin_tone" in vocab["appearance"]


def test_a_whole_session_through_the_api(client):
    uid = _new_user(client, "green")
    assert {"id": uid, "profile": {"name": "green", "preference": {"*": {"Color": "green"}}, "appearance": {}}} in \
        client.get("/api/users").json()
    outfit = client.get(f"/api/users/{uid}/outfits").json()[0]
    item = client.get(f"/api/items/{outfit['items'][0]}.png")
    assert item.status_code == 200 and item.headers["content-type"] == "image/png"
    sid = _start(client, uid, outfit_id=outfit["id"])
    first = client.post(f"/api/sessions/{sid}/rounds", json={"n": 3}).json()
    assert first["number"] == 1 and first["feedback"] is None and len(first["candidates"]) == 3
    np.testing.assert_array_equal(_image(first["candidates"][0]["image"])[0, 0], COLOURS["green"])
    assert first["candidates"][0]["shop"] == [{"item_id": "item-3", "score": 0.5, "image": "/api/items/item-3.png"}]
    second = client.post(f"/api/sessions/{sid}/rounds", json={"feedback": "Color: blue", "n": 2}).json()
    assert second["parsed"] == {"set": {"Color": "blue"}}
    assert second["preference"] == {"targets": {"shoes": {"Color": "blue"}}, "avoid": {}}
    np.testing.assert_array_equal(_image(second["candidates"][1]["image"])[0, 0], COLOURS["blue"])
    history = client.get(f"/api/sessions/{sid}").json()
    assert [r["number"] for r in history["rounds"]] == [1, 2]
    assert history["outfit"] == [{"item_id": "item-1", "category": "top", "image": "/api/items/item-1.png"},
                                 {"item_id": "item-2", "category": "bottom", "image": "/api/items/item-2.png"},
                                 {"item_id": None, "category": "shoes", "image": None}]
    assert [(c["index"], c["number"]) for c in first["candidates"]] == [(0, 1), (1, 2), (2, 3)]
    assert client.get(f"/api/sessions?user_id={uid}").json()[0]["rounds"] == 2
    assert client.get(f"/api/sessions/{sid}/progress").json()["state"] == "done"


@pytest.mark.parametrize("method,path,body,status,message", [
    ("get", "/api/users/nobody/outfits", None, 404, "unknown user: user 'nobody' does not exist"),
    ("get", "/api/sessions?user_id=nobody", None, 404, "unknown user"),
    ("post", "/api/sessions", {"user_id": "nobody", "task": "pfitb"}, 404, "unknown user"),
    ("post", "/api/sessions", {"user_id": "u0", "task": "pfitb", "outfit_id": "o9"}, 404, "unknown outfit"),
    ("post", "/api/sessions", {"user_id": "u0", "task": "knit"}, 422, "body.task: Input should be 'pfitb' or 'gor'"),
    ("get", "/api/sessions/s9", None, 404, "unknown session: session 's9' does not exist"),
    ("get", "/api/sessions/s9/progress", None, 404, "unknown session"),
    ("post", "/api/sessions/s9/rounds", {}, 404, "unknown session"),
    ("post", "/api/sessions/S/rounds", {"feedback": "make it sparkle"}, 400, "feedback: cannot read 'make it sparkle'"),
    ("post", "/api/sessions/S/rounds", {"n": 9}, 413, "n: 9 candidates requested, at most 8 per round"),
    ("post", "/api/sessions/S/rounds", {"n": 0}, 422, "body.n: Input should be greater than or equal to 1"),
    ("post", "/api/sessions/S/rounds", {"n": "many"}, 422, "body.n: Input should be a valid integer"),
    ("post", "/api/sessions/S/rounds", {"feedbak": "Color: blue"}, 422, "body.feedbak: Extra inputs are not permitted"),
    ("post", "/api/sessions/S/rounds", b'{"n": 2', 400, "request body is not valid JSON"),
    ("post", "/api/users", {"profile": {"preference": {"Color": "mauve"}}}, 400,
     "profile.preference.Color: expected one of"),
    ("post", "/api/users", {"profile": "red"}, 422, "body.profile: Input should be a valid dictionary"),
    ("get", "/api/items/item-404.png", None, 404, "unknown catalogue item: item 'item-404' is not in the catalogue"),
    ("get", "/api/users/u0/outfits?limit=0", None, 422, "query.limit: Input should be greater than or equal to 1"),
])
def test_client_errors_are_4xx_with_a_clear_message(client, method, path, body, status, message):
    path = path.replace("/S/", f"/{_start(client, 'u0')}/")
    kwargs = {"content": body, "headers": {"Content-Type": "application/json"}} if isinstance(body, bytes) else (
        {} if body is None else {"json": body})
    r = getattr(client, method)(path, **kwargs)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"], r.json()["detail"]


def test_a_rejected_round_leaves_the_session_unchanged_and_usable(client):
    sid = _start(client, "u0")
    assert client.post(f"/api/sessions/{sid}/rounds", json={"feedback": "sparkle"}).status_code == 400
    assert client.get(f"/api/sessions/{sid}/progress").json()["state"] == "error"
    assert client.get(f"/api/sessions/{sid}").json()["rounds"] == []
    assert client.post(f"/api/sessions/{sid}/rounds", json={"n": 1}).json()["number"] == 1


def test_progress_is_reported_while_a_round_samples(client, engine):
    sid = _start(client, "u0")
    engine.gate = threading.Event()
    result = {}
    worker = threading.Thread(target=lambda: result.update(r=client.post(f"/api/sessions/{sid}/rounds",
                                                                         json={"n": 3})))
    worker.start()
    assert engine.sampling.wait(10)
    p = client.get(f"/api/sessions/{sid}/progress").json()
    assert p["state"] == "sampling" and (p["done"], p["total"]) == (0, 3) and p["elapsed_s"] >= 0
    busy = client.post(f"/api/sessions/{sid}/rounds", json={"n": 1})
    assert busy.status_code == 409 and "a round is already running" in busy.json()["detail"]
    engine.gate.set()
    worker.join(10)
    assert result["r"].status_code == 200 and len(result["r"].json()["candidates"]) == 3
    assert client.get(f"/api/sessions/{sid}/progress").json() | {"elapsed_s": 0} == {
        "state": "done", "done": 3, "total": 3, "error": None, "elapsed_s": 0}


def test_rounds_arriving_together_run_as_one_batch(client, engine):
    """While one round holds the sampler, the rounds of two other sessions queue and then run as one batch."""
    sids = [_start(client, "u0") for _ in range(3)]
    engine.gate = threading.Event()
    status = {}

    def post(sid):
        status[sid] = client.post(f"/api/sessions/{sid}/rounds", json={"n": 1}).status_code

    threads = [threading.Thread(target=post, args=(sid,)) for sid in sids]
    threads[0].start()
    assert engine.sampling.wait(10)  # session 0's round is sampling (held by the gate)
    for t in threads[1:]:
        t.start()
    deadline = time.monotonic() + 10
    while any(client.get(f"/api/sessions/{sid}/progress").json()["state"] != "queued" for sid in sids[1:]):
        assert time.monotonic() < deadline, "rounds never queued"
        time.sleep(0.01)
    time.sleep(0.2)  # past the board: into the batcher's queue
    engine.gate.set()
    for t in threads:
        t.join(10)
    assert status == dict.fromkeys(sids, 200)
    assert engine.batches[0] == sids[:1] and sorted(engine.batches[1]) == sorted(sids[1:]) and len(engine.batches) == 2
    assert all(len(client.get(f"/api/sessions/{sid}").json()["rounds"]) == 1 for sid in sids)


def test_concurrent_sessions_do_not_mix(client):
    users = {colour: _new_user(client, colour) for colour in ("red", "black")}
    sids = {colour: _start(client, uid, task="gor", outfit_id=None) for colour, uid in users.items()}
    feedback = {"red": ["Color: blue", "Color: green"], "black": ["Color: green", "Color: red"]}
    errors = []

    def drive(colour):
        try:
            for fb in [None] + feedback[colour]:
                r = client.post(f"/api/sessions/{sids[colour]}/rounds", json={"feedback": fb, "n": 2})
                assert r.status_code == 200, r.text
                time.sleep(0.01)
        except AssertionError as err:  # re-raised in the main thread
            errors.append(err)

    threads = [threading.Thread(target=drive, args=(c,)) for c in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    for colour, sid in sids.items():
        s = client.get(f"/api/sessions/{sid}").json()
        assert s["user_id"] == users[colour]
        assert [r["feedback"] for r in s["rounds"]] == [None] + feedback[colour]
        expected = [colour] + [fb.split(": ")[1] for fb in feedback[colour]]
        assert [r["preference"]["targets"]["shoes"]["Color"] for r in s["rounds"]] == expected
        for r, c in zip(s["rounds"], expected):
            assert all((_image(k["image"])[0, 0] == COLOURS[c]).all() for k in r["candidates"])


def test_serve_refuses_bad_flags_before_loading_anything(tmp_path, capsys):
    assert COMMANDS["serve"][0] == "dualfashion_jax.web.cli"
    assert serve_cli.main(["--checkpoint", str(tmp_path / "none"), "--data", str(tmp_path)]) == 1
    assert f"error: --checkpoint {tmp_path / 'none'}: not a directory" in capsys.readouterr().err
    for flag, value, message in (("--like-strength", "2", "--like-strength must be in (0, 1] or 'none'"),
                                 ("--like-strength", "soft", "--like-strength must be in (0, 1] or 'none'"),
                                 ("--batch-window", "-1", "--batch-window must be >= 0")):
        assert serve_cli.main(["--checkpoint", str(tmp_path), "--data", str(tmp_path), flag, value]) == 1
        assert message in capsys.readouterr().err
    assert serve_cli.main(["--checkpoint", str(tmp_path), "--data", str(tmp_path), "--max-candidates", "0"]) == 1
    assert "error: --max-candidates must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        serve_cli.main(["--checkpoint", str(tmp_path)])
    assert exit_.value.code == 2 and "--data" in capsys.readouterr().err
