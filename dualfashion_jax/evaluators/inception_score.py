"""IS family from the 50-way Inception's class probabilities (difashion_eval.md §2.2; spec §6).

Preprocessing: images in [0, 1] -> bilinear 299 (align_corners=False) -> [-1, 1] -> `InceptionV3` (eval,
torchvision transform_input) -> softmax. `is_metrics` returns:
  * is_acc_top1 - DiFashion's IS-acc: mean[argmax p(y|x) == cid_to_label[cid]]
  * is_acc_top3 - DualFashion's IS-Acc: target among the 3 most probable classes
  * is_uniform  - the originals' "IS": exp(mean_x KL(p(y|x) || Uniform(C))) = C * exp(-mean H); one split
  * is_standard - the standard IS: exp(mean_x KL(p(y|x) || p(y))) with p(y) the mean prediction; one split
  * entropy     - mean_x H(p(y|x)) in nats
Logs use eps = 1e-16 inside log(p) as the originals do. Also the `inception_score` runner and its network.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import numpy as np
from flax import nnx

from dualfashion_jax.evaluators.nets.weights import load_inception_v3
from dualfashion_jax.evaluators import batched, preprocess
from dualfashion_jax.evaluators.context import RANDOM, REAL, EvalContext, NetworkInfo
from dualfashion_jax.evaluators.nets import inception_v3
from dualfashion_jax.evaluators.registry import register

EPS = 1e-16


def _label_lookup(cid_to_label: Mapping[int, int] | Sequence[int] | np.ndarray, cids: np.ndarray,
                  num_classes: int) -> np.ndarray:
    if isinstance(cid_to_label, Mapping):
        table = {int(k): int(v) for k, v in cid_to_label.items()}
        missing = sorted({int(c) for c in cids if int(c) not in table})
        if missing:
            raise ValueError(f"cid_to_label has no entry for categories {missing[:20]}")
        targets = np.array([table[int(c)] for c in cids], np.int64)
    else:
        arr = np.asarray(cid_to_label, np.int64)
        bad = sorted({int(c) for c in cids if not 0 <= int(c) < arr.shape[0]})
        if bad:
            raise ValueError(f"cid_to_label (array of {arr.shape[0]}) has no entry for categories {bad[:20]}")
        targets = arr[cids]
    out_of_range = sorted({int(t) for t in targets if not 0 <= t < num_classes})
    if out_of_range:
        raise ValueError(f"cid_to_label maps to labels {out_of_range[:20]} outside the classifier's {num_classes} classes")
    return targets


def is_metrics(probs: np.ndarray, labels: np.ndarray | Sequence[int],
               cid_to_label: Mapping[int, int] | Sequence[int] | np.ndarray) -> dict[str, float]:
    """probs [N, C] (rows sum to 1), labels [N] category ids (cid), cid_to_label cid -> class index.

    Returns {"is_acc_top1", "is_acc_top3", "is_uniform", "is_standard", "entropy"} (floats).
    """
    p = np.asarray(probs, np.float64)
    cids = np.asarray(labels, np.int64).reshape(-1)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"is_metrics: probs must be [N > 0, C], got shape {p.shape}")
    if cids.shape[0] != p.shape[0]:
        raise ValueError(f"is_metrics: {cids.shape[0]} labels for {p.shape[0]} probability rows")
    if np.any(p < -1e-6) or not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError("is_metrics: probs rows must be probability vectors (non-negative, summing to 1); "
                         "apply a softmax to logits first")
    n, c = p.shape
    targets = _label_lookup(cid_to_label, cids, c)
    k = min(3, c)
    topk = np.argsort(-p, axis=1, kind="stable")[:, :k]
    log_p = np.log(p + EPS)
    entropy = -(p * log_p).sum(axis=1)                                  # [N]
    kl_uniform = (p * (log_p - np.log(1.0 / c))).sum(axis=1)            # [N]
    marginal = p.mean(axis=0, keepdims=True)                            # [1, C]
    kl_marginal = (p * (log_p - np.log(marginal + EPS))).sum(axis=1)    # [N]
    return {
        "is_acc_top1": float(np.mean(topk[:, 0] == targets)),
        "is_acc_top3": float(np.mean((topk == targets[:, None]).any(axis=1))),
        "is_uniform": float(np.exp(kl_uniform.mean())),
        "is_standard": float(np.exp(kl_marginal.mean())),
        "entropy": float(entropy.mean()),
    }


def probs_fn(model):
    """Jitted [b, H, W, 3] images in [0, 1] -> softmax probabilities [b, C] of an `InceptionV3`."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def fn(state, images01):
        return nnx.merge(graphdef, state).probs(preprocess.inception_input(images01))  # [b, C]

    return lambda images01: fn(state, images01)


def class_probs(model, images01: np.ndarray, *, batch_size: int = 32, show_progress: bool = True) -> np.ndarray:
    """images [N, H, W, 3] in [0, 1] (or uint8) -> probabilities [N, C] float32."""
    images01 = np.asarray(images01)
    if images01.ndim != 4 or images01.shape[-1] != 3:
        raise ValueError(f"class_probs expects NHWC RGB images [N, H, W, 3], got shape {images01.shape}")
    if images01.dtype == np.uint8:
        images01 = images01.astype(np.float32) / 255.0
    return batched.map_batches(probs_fn(model), images01, batch_size=batch_size, desc="IS probs",
                               show_progress=show_progress)


# ------------------------------------------------------------------------------------------------ runner
def inception_net(ctx: EvalContext) -> inception_v3.InceptionV3:
    """--inception (DiFashion's fine-tuned 50-way classifier), else a seeded random stand-in with one class per
    category id."""
    def build():
        n = max(ctx.category_names()) + 1
        path = ctx.opt.checkpoints.get("inception")
        if path:
            model = load_inception_v3(path, num_classes=50 if n <= 50 else n)
            ctx.networks["inception"] = NetworkInfo("inception", REAL, path, model.config.to_json())
        else:
            cfg = inception_v3.InceptionV3Config(num_classes=n)
            model = inception_v3.InceptionV3(cfg, rngs=nnx.Rngs(ctx.opt.seed))
            ctx.networks["inception"] = NetworkInfo("inception", RANDOM, f"random init, seed {ctx.opt.seed}",
                                                    cfg.to_json())
        return model
    return ctx.cached("net_inception", build)


def cid_to_label(cids) -> dict[int, int]:
    """DiFashion's mapping: position of str(cid) in the lexicographically sorted folder names (ImageFolder order)."""
    names = sorted(str(c) for c in cids)
    return {int(s): i for i, s in enumerate(names)}


@register("inception_score", networks=["inception"], group="Fidelity", default_function="run_default_inception_score",
          description="IS family: top-1/top-3 category accuracy, uniform-prior IS (DiFashion), standard IS, entropy",
          headline=[("is_acc_top1", "IS-acc"), ("is_acc_top3", "IS-acc@3"), ("is_uniform", "IS")])
def run_inception_score(ctx: EvalContext) -> dict:
    probs = class_probs(inception_net(ctx), ctx.gen_images(), batch_size=ctx.opt.batch_size,
                        show_progress=ctx.opt.show_progress)
    table = cid_to_label(ctx.category_names()) if ctx.opt.checkpoints.get("inception") else \
        {int(c): int(c) for c in ctx.category_names()}
    return is_metrics(probs, ctx.categories, table)


def run_default_inception_score(ctx: EvalContext) -> dict:
    """`inception_score` as a default metric: only with the real classifier (a random 50-way head means nothing)."""
    if not ctx.opt.checkpoints.get("inception"):
        raise ValueError("no --inception checkpoint (DiFashion's fine-tuned 50-way Inception-v3, "
                         "Inception-finetune-epoch300); request inception_score by name for a random-weight stand-in")
    return run_inception_score(ctx)
