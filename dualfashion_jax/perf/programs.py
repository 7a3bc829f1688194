"""The programs whose partitioning is measured: the synthetic bench step, the real stage-1 / stage-2 train steps
(frozen T5 and VAE inside the step), the PFITB image sampler and the generation `Programs.sample` program that
generation/runner.py runs (images + captions), each lowered on abstract inputs on a mesh.

`compile_program(kind, ...)` AOT-compiles one of them (nothing is allocated, so any config fits on CPU) and
returns the compiled executable with what the HLO analysis needs (weight shapes, batch, token counts).
Used by benchmarks/partitioning.py and tests/test_partitioning.py.
"""
from __future__ import annotations

import dataclasses
import math
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from dualfashion_jax.perf import step as bench_step
from dualfashion_jax.diffusion import stages
from dualfashion_jax.generation import bundle as bundle_lib, conditioning as cond, sampling as gen_sampling
from dualfashion_jax.generation.settings import GenSettings
from dualfashion_jax.models import mmdit, t5 as t5_lib, vae as vae_lib
from dualfashion_jax.models.mmdit_config import MMDiTConfig
from dualfashion_jax.modeling import latents as latents_lib
from dualfashion_jax.samplers.flow_euler import GuidanceConfig, sample_images
from dualfashion_jax.sharding import activations, partition, rules as rules_lib
from dualfashion_jax.text import tokenizer as tok_lib
from dualfashion_jax.training import optim, step as step_lib

KINDS = ("bench", "stage1", "stage2", "sampling", "generation")


@dataclasses.dataclass(frozen=True)
class Workload:
    """Model configs and per-step sizes; `batch` is the global batch (chains for sampling)."""

    cfg: MMDiTConfig
    t5: t5_lib.T5Config
    vae: vae_lib.VAEConfig
    batch: int
    seg_len: int = 12          # tokens per T5 segment (bench: text tokens fed to the trunk)
    sample_steps: int = 2      # Euler steps of the sampler (a fori_loop: trip count in the HLO)
    context_items: int = 2     # stage 2 / sampling: context items per row
    rows_per_chain: int = 1    # generation: images (= captions) sampled per chain, rows [B * k] in the program

    @property
    def image_size(self) -> int:
        return self.cfg.latent_hw[0] * self.vae.downsample_factor

    def token_counts(self) -> tuple[int, ...]:
        """Sequence lengths a full-batch activation could be flattened with (image, text, joint, pixels)."""
        n_img = math.prod(self.cfg.latent_hw) // self.cfg.patch_size ** 2
        segs = [self.seg_len * k for k in (1, 2, 3)]
        joint = [n_img + s for s in segs] + [self.cfg.num_null_tokens + s for s in segs]
        base = {1, n_img, *segs, *joint, self.image_size ** 2, math.prod(self.cfg.latent_hw)}
        k = self.rows_per_chain  # generation: [B * k, ...] rows are a full batch too
        return tuple(sorted({t * m for t in base for m in {1, k}} - {1}))


@dataclasses.dataclass
class Compiled:
    compiled: Any
    weight_shapes: list[tuple[int, ...]]   # every weight the program holds (trainable + frozen)
    weight_bytes: int
    stacked_layers: tuple[int, ...]        # leading dims of stacked (scanned) weights
    workload: Workload


def _abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _frozen(w: Workload, mesh, table, with_vae: bool):
    mods = {"t5": lambda: t5_lib.T5Encoder(w.t5, rngs=nnx.Rngs(1))}
    if with_vae:
        mods["vae"] = lambda: vae_lib.AutoencoderKL(w.vae, rngs=nnx.Rngs(2))
    gds, states = {}, {}
    for name, factory in mods.items():
        gd, st = nnx.split(nnx.eval_shape(factory))
        gds[name], states[name] = gd, _abstract(st, partition.state_shardings(st, mesh, table))
    return gds, states


def _train_step(w: Workload, kind: str, mesh, rules_name: str):
    """(jitted step, abstract args) of a stage-1/2 train step with T5 (and VAE for stage 1) frozen inside."""
    table = rules_lib.get(rules_name)
    factory = lambda: mmdit.DualMMDiT(w.cfg, rngs=nnx.Rngs(0))  # noqa: E731
    graphdef, ap, ar = nnx.split(nnx.eval_shape(factory), nnx.Param, ...)
    ocfg = mlc.ConfigDict(bench_step.OPTIM)
    tx, sched = optim.make_optimizer(ocfg)
    psh = partition.state_shardings(ap, mesh, table)
    rep = NamedSharding(mesh, P())
    ssh = {"params": psh, "rest": partition.state_shardings(ar, mesh, table),
           "opt": partition.opt_state_shardings(tx, ap, psh, mesh), "ema": psh, "step": rep, "rng": rep}
    state = _abstract(jax.eval_shape(lambda: step_lib.init_state(
        *nnx.split(factory(), nnx.Param, ...)[1:], tx, 0, True)), ssh)
    gds, frozen = _frozen(w, mesh, table, with_vae=kind == "stage1")
    frozen["null_emb"] = jax.ShapeDtypeStruct((w.seg_len, w.t5.d_model), jnp.float32, sharding=rep)
    frozen["null_emb_2x"] = jax.ShapeDtypeStruct((2 * w.seg_len, w.t5.d_model), jnp.float32, sharding=rep)
    lcfg = stages.LossConfig(mask_id=w.cfg.vocab_size - 1)
    b, l, s, (h, wd), c = w.batch, w.seg_len, w.image_size, w.cfg.latent_hw, w.cfg.in_channels
    ids, f32 = ((b, l), jnp.int32), jnp.float32
    if kind == "stage1":
        shapes = {"t2i_images": ((b, s, s, 3), f32), "i2t_images": ((b, s, s, 3), f32), "t2i_ids": ids,
                  "caption_ids": ids, "caption_label_mask": ids}
    else:
        shapes = {"target_latents": ((b, h, wd, c), f32), "context_latents": ((b, w.context_items, h, wd, c), f32),
                  "caption_ids": ids, "caption_label_mask": ids, "pref_ids": ids, "pref_mask": ids,
                  "sentence_ids": ids, "sentence_mask": ids}

    def loss_fn(model, fz, batch, key):
        batch = dict(batch)
        if kind == "stage1":
            for i, name in enumerate(("t2i", "i2t")):
                x = batch.pop(f"{name}_images")
                batch[f"{name}_latents"] = latents_lib.encode_images(fz["vae"], x, jax.random.fold_in(key, i))
            return stages.stage1_loss(key, batch, model_fn=model, t5_fn=fz["t5"], null_emb=fz["null_emb"], cfg=lcfg)
        return stages.stage2_loss(
            key, batch, model_fn=model, t5_fn=fz["t5"],
            offset_fn=lambda m, k: model.stage2.offset(m, deterministic=False, rngs=k),
            target_role=model.stage2.target_role[...], null_emb=fz["null_emb"], null_emb_2x=fz["null_emb_2x"],
            cfg=lcfg)

    bsh = partition.batch_sharding(mesh)
    fsh = {k: v.sharding if isinstance(v, jax.ShapeDtypeStruct) else jax.tree.map(lambda x: x.sharding, v)
           for k, v in frozen.items()}
    fn = step_lib.jit_step(step_lib.make_step_fn(graphdef, gds, loss_fn, tx, sched, ocfg, 1, mesh), ssh, bsh, fsh,
                           mesh)
    batch = {k: jax.ShapeDtypeStruct(sh, d, sharding=bsh) for k, (sh, d) in shapes.items()}
    return fn, (state, batch, frozen), [ap] + [frozen[k] for k in gds]


def _sampler(w: Workload, mesh, rules_name: str):
    """(jitted program, abstract args): T5 on 3 segments, context offset, Euler + 4-way guidance, VAE decode."""
    table = rules_lib.get(rules_name)
    gd, st = nnx.split(nnx.eval_shape(lambda: mmdit.DualMMDiT(w.cfg, rngs=nnx.Rngs(0))))
    model = _abstract(st, partition.state_shardings(st, mesh, table))
    gds, frozen = _frozen(w, mesh, table, with_vae=True)
    guidance = GuidanceConfig(num_steps=w.sample_steps)

    def program(model_st, fz, b):
        m, t5, ae = nnx.merge(gd, model_st), nnx.merge(gds["t5"], fz["t5"]), nnx.merge(gds["vae"], fz["vae"])
        pref, sent, neg = (cond.encode_segment(t5, b[f"{k}_ids"], b[f"{k}_mask"]) for k in ("pref", "sent", "neg"))
        off = cond.context_offset(m, cond.masked_context_mean(b["ctx_latents"], b["ctx_valid"]))
        r_t = m.stage2.target_role[...]  # as generation/sampling.py: training's (1 - sigma) r_t
        lat = sample_images(m, b["noise"], off, neg, sent, pref, guidance, target_role=r_t)  # [C, h, w, ch]
        return cond.to_uint8(vae_lib.decode_latents(ae, lat))  # [C, S, S, 3]

    bsh = NamedSharding(mesh, P(rules_lib.BATCH))
    c, l, (h, wd), ch = w.batch, w.seg_len, w.cfg.latent_hw, w.cfg.in_channels
    shapes = {"ctx_latents": ((c, w.context_items, h, wd, ch), jnp.float32), "ctx_valid": ((c, w.context_items), jnp.int32),
              "noise": ((c, h, wd, ch), jnp.float32),
              **{f"{k}_{f}": ((c, l), jnp.int32) for k in ("pref", "sent", "neg") for f in ("ids", "mask")}}
    batch = {k: jax.ShapeDtypeStruct(sh, d, sharding=bsh) for k, (sh, d) in shapes.items()}
    fn = jax.jit(program, out_shardings=bsh)
    return fn, (model, frozen, batch), [model] + list(frozen.values())


def _generation(w: Workload, mesh, rules_name: str):
    """(compiled, weights) of `Programs.sample` (generation/sampling.py, what generation/runner.py runs) for
    w.batch chains x w.rows_per_chain images and captions, on a bundle with a test tokenizer."""
    texts = [cond.NEGATIVE_PROMPT, "Recommend a fashion item, on white background.", "a red cotton shirt"]
    with tempfile.TemporaryDirectory() as d:
        tok = tok_lib.build_test_tokenizer(texts, d, vocab_size=60, extra_ids=1, max_length=w.seg_len,
                                           model_type="bpe")
    bundle = bundle_lib.Bundle(mmdit.DualMMDiT(w.cfg, rngs=nnx.Rngs(0)), t5_lib.T5Encoder(w.t5, rngs=nnx.Rngs(1)),
                               vae_lib.AutoencoderKL(w.vae, rngs=nnx.Rngs(2)), tok, info={"source": "partitioning"})
    k = w.rows_per_chain
    settings = GenSettings(num_images=k, num_captions=k, guidance=GuidanceConfig(num_steps=w.sample_steps),
                           caption_steps=w.sample_steps)
    progs = gen_sampling.Programs(bundle, settings, mesh, rules=rules_name)
    c, l, (h, wd), ch = w.batch, w.seg_len, w.cfg.latent_hw, w.cfg.in_channels
    i32 = jnp.int32
    shapes = {"uid": ((c,), jnp.uint32), "oid": ((c,), jnp.uint32), "image_idx": ((c, k), i32),
              "caption_idx": ((c, k), i32), "ctx_latents": ((c, w.context_items, h, wd, ch), jnp.float32),
              "ctx_valid": ((c, w.context_items), jnp.float32),
              **{f"{p}_{f}": ((c, l), i32) for p in ("pref", "sent", "tmpl") for f in ("ids", "mask")},
              "tmpl_labels": ((c, l), i32)}
    batch = {k_: jax.ShapeDtypeStruct(sh, d, sharding=progs.batch_sh) for k_, (sh, d) in shapes.items()}
    return progs.compile("sample", batch), list(progs.states.values())


def _bench(w: Workload, mesh, rules_name: str):
    shape = bench_step.StepShape(w.batch, w.seg_len)
    cfg = dataclasses.replace(w.cfg, stage2=False)  # the bench step does not run the stage-2 modules
    fn, st, b, _, _ = bench_step.build(cfg, shape, rules_name=rules_name, mesh=mesh)
    return fn, (st, b, {}), [st["params"]]


def compile_program(kind: str, w: Workload, mesh, rules_name: str) -> Compiled:
    """AOT-compiles program `kind` (one of KINDS) for workload `w` on `mesh` with the rules preset `rules_name`."""
    if kind not in KINDS:
        raise ValueError(f"compile_program: kind must be one of {KINDS}, got {kind!r}")
    partition.check_batch_divisible(w.batch, mesh, "Workload.batch")
    if kind == "generation":
        w = dataclasses.replace(w, rows_per_chain=2)
        compiled, weights = _generation(w, mesh, rules_name)
        return _compiled(compiled, weights, w)
    build = {"bench": _bench, "stage1": lambda *a: _train_step(w, "stage1", *a[1:]),
             "stage2": lambda *a: _train_step(w, "stage2", *a[1:]), "sampling": _sampler}[kind]
    fn, args, weights = build(w, mesh, rules_name)
    with jax.set_mesh(mesh), activations.use_rules(rules_lib.get(rules_name)):
        compiled = fn.lower(*args).compile()
    return _compiled(compiled, weights, w)


def _compiled(compiled, weights, w: Workload) -> Compiled:
    leaves = [x for tree in weights for x in jax.tree.leaves(tree) if not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)]
    stacked = {w.cfg.num_layers, w.t5.num_layers}
    return Compiled(compiled, [tuple(x.shape) for x in leaves],
                    int(sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in leaves)),
                    tuple(sorted(stacked)), w)
