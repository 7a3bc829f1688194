"""Compare trained DVBPR rankers on a synthetic demo folder (issue #17): does the ranker learn the users' taste?

    PYTHONPATH=. python benchmarks/dvbpr_rankers.py --data /work/runs/demo_base/data WORKDIR [WORKDIR ...]
Per workdir: the `ranking_metrics` table on the test split (auc, fitb_acc, recall@K, oracle_auc) and `fav_top1`:
over (test user, category), the share where the colour with the highest mean score among the category's items is
the oracle's favourite colour (the preference the design task should move toward; chance = 1 / #colours).
The oracle labels are read for evaluation only; training never sees them.
"""
from __future__ import annotations

import argparse

import numpy as np

from dualfashion_jax.data.format import SafeDataset
from dualfashion_jax.data.synthetic.truth import load_truth
from dualfashion_jax.evaluators import ranking_metrics as rm
from dualfashion_jax.modeling.dvbpr import load_dvbpr


def fav_top1(scores: np.ndarray, fav: np.ndarray, item_category: np.ndarray, item_colour: np.ndarray) -> float:
    """scores [U, N+1], fav [U, C] -> share of (u, c) whose top mean-score colour in category c is fav[u, c]."""
    n_col = int(item_colour.max()) + 1
    mean = np.full(fav.shape + (n_col,), -np.inf)  # [U, C, K]
    for c in range(fav.shape[1]):
        for k in range(n_col):
            m = (item_category == c) & (item_colour == k)
            if m.any():
                mean[:, c, k] = scores[:, m].mean(1)
    return float(np.mean(mean.argmax(-1) == fav))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="a synthetic demo data folder (with truth/)")
    p.add_argument("workdirs", nargs="+", help="DVBPR training workdirs")
    a = p.parse_args(argv)
    ds, truth = SafeDataset(a.data), load_truth(a.data)
    uids = np.unique(ds.split("test").uids)
    fav = truth.fav_colour[truth.user_rows(uids)]
    print(f"fav_top1 chance {1 / (int(truth.item['colour'].max()) + 1):.3f}")
    print("| workdir | step | auc | fitb_acc | recall@10 | recall@50 | oracle_auc | fav_top1 |\n|---|---|---|---|---|---|---|---|")
    for wd in a.workdirs:
        model, step = load_dvbpr(wd)
        scorer = rm.dvbpr_scorer(model, ds)
        row = rm.ranking_table({"dvbpr": scorer}, ds, "test")["dvbpr"]
        top1 = fav_top1(scorer(uids), fav, truth.item["category"], truth.item["colour"])
        print(f"| {wd} | {step} | " + " | ".join(f"{row[k]:.3f}" for k in ("auc", "fitb_acc", "recall@10",
                                                                          "recall@50", "oracle_auc"))
              + f" | {top1:.3f} |")


if __name__ == "__main__":
    main()
