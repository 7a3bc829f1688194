"""Simulated-user sessions on the demo's test users: preferred-attribute hit rate and appearance-fit by round.

    python benchmarks/sessions_sim.py --checkpoint RUN/stage3 --data DATA_WITH_APPEARANCE --rounds 5 --n 4 \
        [--users 160] [--start warm,cold] [--oversample 1,3] [--like-strength 0.5,none] [--batch 16] \
        [--fid-rounds 1,3] [--out sessions_sim.json]
Each user gets one PFITB session on its own test outfit through `SessionEngine` (SQLite store in a temp folder);
after every round the oracle user (`sessions/simulate.py`) reads the candidates from pixels and answers ("more
like #k" for a candidate in its favourite colour that suits it; `--like-strength none`: that only copies k's
caption, a number: the next round starts from k's image, SDEdit). `--batch B`: B users' rounds go through
`SessionEngine.round_many` together (one sampler batch per round and kind of round; same candidates as one by one
up to batch-size numerics).
`warm`: the session starts from the user's dataset preference text; `cold`: from an empty preference (a new user
whose taste the session must learn from feedback). `--oversample 1,3`: the engine as is, and sampling 3n per
round keeping the n whose nearest catalogue items agree best with the stated preference. Per round: colour /
material hit rate vs the hidden favourite, appearance-fit, category accuracy, the diversity of a round's candidates
(mean pairwise mean-absolute pixel difference in [0, 1], per user), the share of "more like" answers, and
(--fid-rounds) the TF-FID of the
round's candidates vs the blanks' ground truth images, its `fid_ratio` (over the FID of as many random catalogue
items, the random-real baseline of evaluators/fidelity.py) and its ratio to round 1. The target of issue #18: round-3
hit rate >= 1.5x round 1 with category and FID holding.
"""
from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time

import numpy as np

from dualfashion_jax.data.format import SafeDataset
from dualfashion_jax.data.images import ItemImages
from dualfashion_jax.data.synthetic.truth import load_truth
from dualfashion_jax.evaluators import fid as fid_lib
from dualfashion_jax.evaluators.nets import weights as nets_weights
from dualfashion_jax.evaluators.oracle_metrics import dataset_shapes
from dualfashion_jax.sessions import engine as engine_lib
from dualfashion_jax.sessions.records import decode_png
from dualfashion_jax.sessions.simulate import SimulatedUser


def diversity(images: np.ndarray) -> float:
    """Mean pairwise mean-absolute pixel difference of uint8 [N, S, S, 3] candidates, in [0, 1]."""
    x = images.astype(np.float32) / 255.0
    n = len(x)
    return float(np.mean([np.abs(x[i] - x[j]).mean() for i in range(n) for j in range(i + 1, n)])) if n > 1 else 0.0


def run(eng, ds, truth, uids, start: str, rounds: int, n: int, batch: int) -> dict:
    """Per round: per-candidate hits, the candidate images, their diversity and the feedback given after it."""
    shapes, cats, appearance = dataset_shapes(ds.root), ds.categories, ds.appearance
    per = [{"colour": [], "material": [], "fit": [], "category": [], "images": [], "feedback": [], "diversity": []}
           for _ in range(rounds)]
    fitb = ds.fitb(engine_lib.SPLIT)
    for lo in range(0, len(uids), batch):
        group = []  # (session id, simulated user, blank category)
        for uid in uids[lo: lo + batch]:
            user = SimulatedUser(truth, uid, appearance.get(uid), shapes)
            if start == "warm":
                user_id = f"u{uid}"
            else:
                user_id = eng.create_user({"name": f"cold {uid}", "appearance": appearance.get(uid, {}),
                                           "data_uid": uid})
            s = eng.start(user_id, "pfitb")
            row = int(np.flatnonzero(fitb.oids == int(s.outfit_id.partition(":")[2]))[0])
            blank = int(np.flatnonzero(fitb.outfits[row] == 0)[0])
            group.append((s.id, user, int(fitb.category[row, blank])))
        texts = [None] * len(group)
        for r in range(rounds):
            out = eng.round_many([(sid, t, n, None) for (sid, _, _), t in zip(group, texts)])
            for g, ((sid, user, cat), rnd) in enumerate(zip(group, out)):
                if isinstance(rnd, Exception):
                    raise rnd
                images = np.stack([decode_png(c.image_png) for c in rnd.candidates])
                j = user.judge(images, cat)
                for k, v in (("colour", j.colour_hit), ("material", j.material_hit), ("fit", j.fits),
                             ("category", j.category == cat)):
                    per[r][k].extend(v.tolist())
                per[r]["images"].append(images)
                per[r]["diversity"].append(diversity(images))
                texts[g] = user.feedback([(cat, j)], rnd.preference["targets"], cats,
                                         [c.caption for c in rnd.candidates])
                per[r]["feedback"].append(texts[g])
        print(f"  {start}: {min(lo + batch, len(uids))}/{len(uids)} users", flush=True)
    return per


def random_real_features(fid_model, ds, n: int, size: int, seed: int = 0):
    """FID features of n catalogue items drawn uniformly (seeded): the random-real baseline of `fid_ratio`
    (as evaluators/fidelity.py `random_real_iids` on main draws them)."""
    ids = np.flatnonzero(np.asarray(ds.iid_category) >= 0)  # id 0 is the blank
    iids = np.random.default_rng(seed).choice(ids, size=n, replace=ids.size < n)
    return fid_lib.FIDFeatures.from_features(fid_lib.extract_features(
        fid_model, ItemImages(ds, size).many(iids), show_progress=False))


def summarize(per: list[dict], fid_model, gt_features, fid_rounds: set[int], real=None) -> list[dict]:
    """Per-round rates; TF-FID of the rounds in `fid_rounds` vs the blanks' GT images and its ratio to the
    random-real baseline (`real(n)`: features of n random catalogue items); ratios to round 1."""
    out = []
    for r, d in enumerate(per):
        row = {"round": r + 1, "colour_hit": float(np.mean(d["colour"])), "material_hit": float(np.mean(d["material"])),
               "both_hit": float(np.mean(np.asarray(d["colour"]) & np.asarray(d["material"]))),
               "appearance_fit": float(np.mean(d["fit"])), "category_acc": float(np.mean(d["category"])),
               "feedback_alternatives": float(np.mean([t == "alternatives" for t in d["feedback"]])),
               "feedback_like": float(np.mean(["more like" in t for t in d["feedback"]])),
               "diversity": float(np.mean(d["diversity"]))}
        if fid_model is not None and r + 1 in fid_rounds:
            gen = fid_lib.FIDFeatures.from_features(fid_lib.extract_features(
                fid_model, np.concatenate(d["images"]), show_progress=False))
            row["fid"] = gen.distance(gt_features)
            if real is not None:
                row["fid_random_real"] = real(len(np.concatenate(d["images"]))).distance(gt_features)
                row["fid_ratio"] = row["fid"] / row["fid_random_real"]
        out.append(row)
    for row in out:
        for k in ("colour_hit", "material_hit", "both_hit", "appearance_fit", "diversity", "fid", "fid_ratio"):
            if k in row and out[0].get(k):
                row[f"{k}_vs_round1"] = row[k] / out[0][k]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="the demo dataset made with appearance (make.py --appearance)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--n", type=int, default=4, help="candidates per round")
    p.add_argument("--users", type=int, default=0, help="first N test users (0 = all)")
    p.add_argument("--start", default="warm,cold")
    p.add_argument("--oversample", default="1", help="variants: sample k n per round, keep the n best grounded")
    p.add_argument("--like-strength", default=str(engine_lib.LIKE_STRENGTH),
                   help="variants: 'more like #k' SDEdit strength in (0, 1], or none (caption copy only)")
    p.add_argument("--batch", type=int, default=16, help="users whose rounds run as one sampler batch")
    p.add_argument("--fid-rounds", default="", help="e.g. 1,3: TF-FID (real weights) of these rounds' candidates "
                   "vs the blanks' GT images")
    p.add_argument("--out", help="write the table as JSON here")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    ds, truth = SafeDataset(a.data), load_truth(a.data)
    with tempfile.TemporaryDirectory() as tmp:
        eng = engine_lib.SessionEngine.open(a.checkpoint, a.data, f"{tmp}/sessions.db", max_candidates=a.n,
                                            settings=engine_lib.demo_overrides())
        uids = sorted(eng.dataset_users[u]["data_uid"] for u in eng.dataset_users)
        uids = uids[: a.users] if a.users else uids
        fid_model = gt_features = None
        if a.fid_rounds:
            fid_model = nets_weights.load_real_fid_inception()
            fitb, split = ds.fitb(engine_lib.SPLIT), ds.split(engine_lib.SPLIT)
            rows = np.flatnonzero(np.isin(fitb.uids, uids))
            gt = split.outfits[rows][fitb.outfits[rows] == 0]  # [R] the blanks' GT items (one per user)
            gt_features = fid_lib.FIDFeatures.from_features(fid_lib.extract_features(
                fid_model, ItemImages(ds, eng.bundle.image_size).many(gt), show_progress=False))
        fid_rounds = {int(x) for x in a.fid_rounds.split(",") if x}
        real = None
        if fid_model is not None:
            size = eng.bundle.image_size
            real = functools.lru_cache(maxsize=4)(lambda n: random_real_features(fid_model, ds, n, size))
        results = {}
        variants = [(int(o), None if x == "none" else float(x)) for o in a.oversample.split(",")
                    for x in a.like_strength.split(",")]
        for oversample, strength in variants:
            eng.oversample, eng.like_strength = oversample, strength
            for start in a.start.split(","):
                name = f"{start}/oversample{oversample}/like{strength if strength else '-caption'}"
                per = run(eng, ds, truth, uids, start, a.rounds, a.n, a.batch)
                results[name] = summarize(per, fid_model, gt_features, fid_rounds, real)
                print(f"\n{name} ({len(uids)} users x {a.n} candidates):", flush=True)
                for row in results[name]:
                    print("  " + "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in row.items()), flush=True)
                if a.out:  # what is done so far survives an interrupted run
                    with open(a.out, "w") as f:
                        json.dump(results, f, indent=1)
    results["config"] = {"checkpoint": a.checkpoint, "data": a.data, "users": len(uids), "n": a.n,
                         "rounds": a.rounds, "batch": a.batch, "seconds": round(time.perf_counter() - t0, 1),
                         "settings": engine_lib.demo_overrides()}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1)
    print(f"done in {results['config']['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
