"""Image-grounded "more like #k" (SDEdit from the liked candidate) and rounds of several sessions as one sampler
batch, on the tiny random-weight model of tests/test_sessions_engine.py (same settings: compiled programs reused)."""
import numpy as np
import pytest

from generation_support import make_session_world

from dualfashion_jax.data.format import SafeDataset
from dualfashion_jax.generation import sampling
from dualfashion_jax.generation.api import Request, recommend_many
from dualfashion_jax.sessions.engine import LIKE_STRENGTH, SessionEngine, task_settings
from dualfashion_jax.sessions.records import decode_png
from dualfashion_jax.sessions.store import Store

FAST = {"steps": 4, "caption_steps": 2}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root, _, bundle = make_session_world(tmp_path_factory.mktemp("sessions_batch"))
    return root, bundle


@pytest.fixture()
def engine(world, tmp_path):
    root, bundle = world
    return SessionEngine(bundle, SafeDataset(root / "data"), Store(tmp_path / "s.db"), max_candidates=4, settings=FAST)


@pytest.fixture()
def sampler_calls(monkeypatch):
    """Counts `Programs.sample` calls (one per sampler batch): (start step, chains); keeps the start latents."""
    calls = []
    real = sampling.Programs.sample

    def spy(self, batch):
        calls.append((self.start_step, batch["uid"].shape[0]))
        if "start_latents" in batch:
            spy.start = (self, batch["start_latents"])
        return real(self, batch)
    monkeypatch.setattr(sampling.Programs, "sample", spy)
    return calls


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


@pytest.mark.slow  # ~25 s CPU (4 rounds, 2 programs, a replay); minutes of wall time on the loaded 2-core CPU
def test_more_like_starts_from_the_liked_image_and_replays(engine, sampler_calls):
    s = engine.start("u1", "pfitb")
    r1 = engine.round(s.id, n=3)
    liked = decode_png(r1.candidates[1].image_png)
    r2 = engine.round(s.id, "more like #2", n=3)
    r3 = engine.round(s.id, "alternatives", n=3)  # the same preference from pure noise
    assert r2.settings["like_strength"] == LIKE_STRENGTH and r2.parsed["like"] == [2]
    assert [k for k, _ in sampler_calls] == [0, 3, 0]  # strength 0.3 of 4 steps: the like round starts at step 3
    programs, start = sampling.Programs.sample.start  # what the spy saw in the like round
    assert start.shape[:2] == (1, 3)  # [chains, samples, h, w, ch]: every sample from #2's latent
    want = programs.encode(liked[None, None], np.zeros(1, np.uint32), np.zeros(1, np.uint32))[0, 0]
    for k in range(3):
        np.testing.assert_allclose(start[0, k], want, atol=1e-5)  # the VAE posterior mean of candidate #2's PNG
    imgs = [decode_png(c.image_png) for c in r2.candidates]
    assert min(_mad(imgs[i], imgs[j]) for i in range(3) for j in range(i)) > 0  # distinct noise per sample
    assert all(_mad(a, decode_png(c.image_png)) > 0 for a in imgs for c in r3.candidates)
    replayed = engine.replay(s.id)
    assert [[c.image_png for c in r.candidates] for r in replayed.rounds] == \
        [[c.image_png for c in r.candidates] for r in (r1, r2, r3)]
    engine.like_strength = None  # caption copy only: a plain round
    r4 = engine.round(s.id, "more like #1", n=3)
    assert r4.settings["like_strength"] is None and sampler_calls[-1][0] == 0


@pytest.mark.slow  # ~25 s CPU (batch-shape compiles and replays); minutes of wall time on the loaded 2-core CPU
def test_round_many_is_one_sampler_call_equal_to_each_session_alone(world, engine, sampler_calls):
    a, b = engine.start("u0", "pfitb"), engine.start("u2", "pfitb")
    engine.round(a.id, n=2)
    engine.round(b.id, n=2)
    del sampler_calls[:]
    ra, rb = engine.round_many([(a.id, "Color: pink", 2, None), (b.id, "in green", 2, None)])
    assert sampler_calls == [(0, 2)]  # both sessions in one batch of 2 chains
    cat_a = a.categories[a.outfit.index("")]
    assert ra.preference["targets"][cat_a]["Color"] == "pink" and ra.settings["chains"] == 2
    for sid, rnd in ((a.id, ra), (b.id, rb)):  # alone (padded to the stored 2 chains): bit for bit
        again = engine.replay(sid).rounds[-1]
        assert [c.image_png for c in again.candidates] == [c.image_png for c in rnd.candidates]
        assert [c.caption for c in again.candidates] == [c.caption for c in rnd.candidates]
    del sampler_calls[:]
    out = engine.round_many([(a.id, "more like #1", 2, None), (b.id, "alternatives", 2, None), ("nope", None, 2, None)])
    assert sorted(sampler_calls) == [(0, 1), (3, 1)]  # another program per kind of round; the unknown one fails
    assert out[0].settings["chains"] == 1 and isinstance(out[2], KeyError)
    with pytest.raises(ValueError, match="one round per session"):
        engine.round_many([(a.id, None, 2, None), (a.id, None, 2, None)])


def test_recommend_many_rows_equal_single_requests_and_errors(world):
    bundle = world[1]
    gen = task_settings("pfitb", FAST)
    item = np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)
    reqs = [Request({"Color": "pink"}, "dress", [item], (1, 7)), Request({"Color": "green"}, "top", [], (2, 7))]
    imgs, caps = recommend_many(bundle, reqs, 2, 2, gen.seed, gen)
    for c, r in enumerate(reqs):
        one, cap = recommend_many(bundle, [r], 2, 2, gen.seed, gen)  # alone, 1 chain: batch-size numerics
        assert np.abs(imgs[c].astype(int) - one[0].astype(int)).max() <= 1 and caps[c] == cap[0]
        padded, cap = recommend_many(bundle, [r], 2, 2, gen.seed, gen, chains=2)  # alone, 2 chains: exact
        np.testing.assert_array_equal(imgs[c], padded[0])
        assert caps[c] == cap[0]
    with pytest.raises(ValueError, match="strength"):
        recommend_many(bundle, reqs[:1], 2, 2, gen.seed, gen, strength=0.5)
    with pytest.raises(ValueError, match=r"requests\[0\].start: expected uint8 \[32, 32, 3\]"):
        recommend_many(bundle, [Request({}, "dress", start=item[:16])], 2, 2, gen.seed, gen, strength=0.5)
