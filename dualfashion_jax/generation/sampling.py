"""The jitted, batched, sharded generation programs shared by PFITB, GOR and the one-request API.

A batch is C "chains" (one blank to fill: PFITB row, GOR (row, sample, step), or an API request), on the leading
axis, split over the mesh's batch axes (data, fsdp); the model/T5/VAE states are placed by the sharding rules
("dp": replicated). Three programs, each compiled once per batch shape:
  encode   uint8 context images [C, K, S, S, 3] -> latents [C, K, h, w, ch] (posterior mean or per-row sample)
  sample   -> N image latents [C, N, h, w, ch] (Euler + guidance, spec §5.1) and M caption ids [C, M, L] (§5.2);
           with `start_step` k > 0 the image chains start from given clean latents noised to sigma_k (SDEdit,
           `design.noised`) and run steps k..n-1 (sessions' image-grounded "more like #k"); the captions read the
           context mean (the original) or their own generated image (`GenSettings.caption_image`)
  decode   latents [C, N, h, w, ch] -> uint8 images [C, N, S, S, 3]
Every random draw is keyed per chain by (seed, uid, oid, sample index, stream) (`settings.sample_key`,
`flow_euler.initial_noise`), so results do not depend on the batch size, padding or device count.
Each process passes its own chains (`make_array_from_process_local_data`) and gets its own rows back.
The programs are traced under `jax.set_mesh(mesh)` and the rules preset (`activations.use_rules`), so the
models' activation constraints keep each device on its own rows (tests/test_partitioning.py checks the HLO).
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dualfashion_jax.generation import conditioning as cond
from dualfashion_jax.generation import design
from dualfashion_jax.generation.settings import STREAM_CAPTION, STREAM_CONTEXT, GenSettings, sample_key
from dualfashion_jax.models import mmdit
from dualfashion_jax.models import vae as vae_lib
from dualfashion_jax.samplers import score_guidance
from dualfashion_jax.samplers.flow_euler import initial_noise, sample_images
from dualfashion_jax.samplers.masked_caption import caption_logits_fn, guided_logits_fn, run_positions, sample_caption
from dualfashion_jax.sharding import activations, mesh as mesh_lib, partition, rules as rules_lib

# keys of a `sample` batch (all [C, ...]); see `Programs.sample`
SAMPLE_KEYS = ("uid", "oid", "image_idx", "caption_idx", "ctx_latents", "ctx_valid", "pref_ids", "pref_mask",
               "sent_ids", "sent_mask", "tmpl_ids", "tmpl_mask", "tmpl_labels")


def make_mesh(devices=None, param_sharding: str = "dp") -> Mesh:
    """Mesh over `devices` (default: every device of every process): (data, fsdp, tensor) = (all, 1, 1) for
    replicated params ("dp"), (1, all, 1) for FSDP-sharded params ("fsdp"; rows still use every device)."""
    sizes = {"dp": {"data": -1, "fsdp": 1, "tensor": 1}, "fsdp": {"data": 1, "fsdp": -1, "tensor": 1}}
    if param_sharding not in sizes:
        raise ValueError(f"param_sharding must be one of {sorted(sizes)}, got {param_sharding!r}")
    return mesh_lib.make_mesh(sizes[param_sharding], devices)


def batch_multiple(mesh: Mesh) -> int:
    """Chains per process must be a multiple of this (its share of the batch axes' devices)."""
    n = math.prod(mesh.shape[a] for a in rules_lib.BATCH)
    return max(1, n // jax.process_count())


class Programs:
    """Holds the bundle's states on `mesh` and the three jitted programs (see module docstring)."""

    def __init__(self, bundle, settings: GenSettings, mesh: Mesh | None = None, rules: str = "dp", dvbpr=None,
                 start_step: int = 0):
        """`rules`: sharding-rule preset for the states ("dp" replicated; "fsdp" with a `make_mesh(param_sharding=
        "fsdp")` mesh shards the model width over all devices). `dvbpr`: the ranker of `settings.score` (eta > 0).
        `start_step` > 0: `sample` batches also carry "start_latents" [C, N, h, w, ch] (module docstring)."""
        if not 0 <= int(start_step) < settings.guidance.num_steps:
            raise ValueError(f"start_step must be in [0, {settings.guidance.num_steps}), got {start_step}")
        self.bundle, self.settings, self.start_step = bundle, settings, int(start_step)
        self.mesh = mesh if mesh is not None else make_mesh()
        self._check_offset_variant()
        self.rules = table = rules_lib.get(rules)
        self.graphs, self.states = {}, {}
        mods = [("model", bundle.model), ("t5", bundle.t5), ("vae", bundle.vae)]
        if bundle.captioner is not None:  # the caption branch's own model and T5 (bundle.with_captioner)
            mods += [("cap_model", bundle.captioner[0]), ("cap_t5", bundle.captioner[1])]
        if settings.score.eta > 0:
            if dvbpr is None:
                raise ValueError(f"DVBPR preference guidance (eta {settings.score.eta}, --dvbpr-eta) needs a trained "
                                 "DVBPR model (--dvbpr WORKDIR)")
            mods.append(("dvbpr", dvbpr))
        self.dvbpr_users = dvbpr.cfg.num_users if settings.score.eta > 0 else None
        for name, mod in mods:
            g, st = nnx.split(mod)
            sh = partition.state_shardings(st, self.mesh, table)
            self.graphs[name], self.states[name] = g, partition.put_global_tree(st, sh)  # multi-host too
        self.batch_sh = NamedSharding(self.mesh, P(rules_lib.BATCH))
        tok = bundle.tokenizer
        neg_ids, neg_mask = cond.negative_tokens(tok)
        self.neg = (jnp.asarray(neg_ids), jnp.asarray(neg_mask))
        self._encode = jax.jit(self._encode_fn)
        self._sample = jax.jit(self._sample_fn)
        self._decode = jax.jit(self._decode_fn)

    def _check_offset_variant(self) -> None:
        cfg = self.bundle.model.config
        if not cfg.stage2:
            raise ValueError(f"{self.bundle.info.get('source', 'model')}: no stage-2 modules (stage-1 checkpoint?); "
                             "PFITB/GOR need the context offset network")
        want = {"mlp": "mlp", "projector": "gor_projector"}[self.settings.gor_offset]
        if cfg.stage2_variant != want:
            raise ValueError(f"{self.bundle.info.get('source', 'model')}: gor_offset={self.settings.gor_offset!r} needs "
                             f"stage2_variant {want!r}, but the checkpoint has {cfg.stage2_variant!r}")

    # -------------------------------------------------------------------------------------------- programs
    @contextlib.contextmanager
    def traced(self) -> Iterator[None]:
        """The context the programs are traced (and called) in: this mesh and rules preset."""
        with jax.set_mesh(self.mesh), activations.use_rules(self.rules):
            yield

    def compile(self, name: str, *args):
        """AOT-compiles program `name` ("encode" | "sample" | "decode") for abstract args after the states
        (ShapeDtypeStructs with `self.batch_sh`): what tests/test_partitioning.py reads the HLO of."""
        with self.traced():
            return getattr(self, f"_{name}").lower(self.states, *args).compile()

    def _merge(self, states, name):
        return nnx.merge(self.graphs[name], states[name])

    def _encode_fn(self, states, images, uid, oid):
        vae = self._merge(states, "vae")
        s = self.settings
        keys = sample_key(s.seed, uid, oid, 0, STREAM_CONTEXT) if s.context_sample else None
        return cond.context_latents(vae, images, sample=s.context_sample, keys=keys)

    def _sample_fn(self, states, b):
        s, g = self.settings, self.settings.guidance
        model, t5 = self._merge(states, "model"), self._merge(states, "t5")
        c = b["uid"].shape[0]
        n, m = b["image_idx"].shape[1], b["caption_idx"].shape[1]
        pref = cond.encode_segment(t5, b["pref_ids"], b["pref_mask"])  # [C, L, D]
        sent = cond.encode_segment(t5, b["sent_ids"], b["sent_mask"])
        neg = jnp.broadcast_to(cond.encode_segment(t5, *self.neg), pref.shape)
        ctx = cond.masked_context_mean(b["ctx_latents"], b["ctx_valid"])  # [C, h, w, ch]
        off = cond.context_offset(model, ctx)
        rep = lambda a, k: jnp.repeat(a, k, axis=0)  # noqa: E731  [C, ...] -> [C*k, ...]
        lat_shape = (c * n,) + ctx.shape[1:]
        x0 = initial_noise(s.seed, rep(b["uid"], n), rep(b["oid"], n), b["image_idx"].reshape(-1), lat_shape)
        if self.start_step:  # SDEdit: the given latents [C, N, ...] noised to sigma_k with that same noise
            x0 = design.noised(b["start_latents"].reshape(lat_shape), x0, g, self.start_step)
        r_t = None if model.stage2 is None else model.stage2.target_role[...]  # training's (1 - sigma) r_t
        hook = None  # eta 0: the plain sampler, no DVBPR state in the program
        if s.score.eta > 0:  # after the 4-way mix, once per step (docs/dvbpr.md)
            score = score_guidance.dvbpr_score_fn(self._merge(states, "dvbpr"), rep(b["uid"], n).astype(jnp.int32),
                                                  self._merge(states, "vae"))
            hook = score_guidance.guide(score, s.score)
        lat = sample_images(model, x0, rep(off, n), rep(neg, n), rep(sent, n), rep(pref, n), g,
                            target_role=r_t, velocity_hook=hook, start_step=self.start_step)  # [C*N, h, w, ch]
        if "cap_model" in states:  # the caption model reads its own T5's vectors
            model, t5 = self._merge(states, "cap_model"), self._merge(states, "cap_t5")
            pref = cond.encode_segment(t5, b["pref_ids"], b["pref_mask"])
            sent = cond.encode_segment(t5, b["sent_ids"], b["sent_mask"])
        segs = [pref, sent]
        if s.caption_cond == "original":
            segs.append(cond.encode_segment(t5, b["tmpl_ids"], b["tmpl_mask"]))  # T5(masked template), §5.2
        length = b["tmpl_ids"].shape[1]
        segs = [rep(x, m) for x in segs]
        logits_fn = caption_logits_fn(model, t5, caption_image(s.caption_image, ctx, lat, n, m), segs, length)
        if s.caption_image_scale:  # guidance toward the image stream, against the null tokens
            runs = s.caption_image_runs()  # None: every position; else the budget template's value runs (keys)
            where = None if runs is None else rep(run_positions(b["tmpl_labels"], runs), m)  # [C*M, L]
            logits_fn = guided_logits_fn(logits_fn, caption_logits_fn(model, t5, None, segs, length),
                                         s.caption_image_scale, where)
        keys = sample_key(s.seed, rep(b["uid"], m), rep(b["oid"], m), b["caption_idx"].reshape(-1), STREAM_CAPTION)
        ids = sample_caption(logits_fn, rep(b["tmpl_ids"], m), rep(b["tmpl_mask"], m), rep(b["tmpl_labels"], m),
                             mask_id=self.bundle.tokenizer.mask_id, key=keys, steps=s.caption_steps,
                             mask_padding=s.mask_padding, temperature=s.caption_temperature,
                             order=s.caption_order)
        return lat.reshape((c, n) + lat.shape[1:]), ids.reshape(c, m, length)

    def _decode_fn(self, states, latents):
        vae = self._merge(states, "vae")
        c, n = latents.shape[:2]
        x = vae_lib.decode_latents(vae, latents.reshape((c * n,) + latents.shape[2:]))  # [C*N, S, S, 3] in [0, 1]
        x = cond.to_uint8(x)
        return x.reshape((c, n) + x.shape[1:])

    # -------------------------------------------------------------------------------------------- host API
    def _put(self, x: np.ndarray) -> jax.Array:
        x = np.asarray(x)
        x = x.astype({np.dtype(np.int64): np.int32, np.dtype(np.uint64): np.uint32,
                      np.dtype(np.float64): np.float32}.get(x.dtype, x.dtype))
        return jax.make_array_from_process_local_data(self.batch_sh, x)

    def _get(self, x: jax.Array) -> np.ndarray:
        if jax.process_count() == 1:
            return np.asarray(x)
        return np.asarray(multihost_utils.global_array_to_host_local_array(x, self.mesh, P(rules_lib.BATCH)))

    def _check_rows(self, c: int) -> None:
        k = batch_multiple(self.mesh)
        if c % k:
            raise ValueError(f"generation batch: {c} chains per process is not a multiple of {k} (this process's "
                             f"devices on the mesh's batch axes); pad the batch")

    def encode(self, images: np.ndarray, uid: np.ndarray, oid: np.ndarray) -> np.ndarray:
        """uint8 [C, K, S, S, 3] -> latents [C, K, h, w, ch] (host-local rows in, host-local rows out)."""
        self._check_rows(images.shape[0])
        with self.traced():
            out = self._encode(self.states, self._put(images), self._put(uid.astype(np.uint32)),
                               self._put(oid.astype(np.uint32)))
        return self._get(out)

    def sample(self, batch: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(image latents [C, N, h, w, ch] fp32, caption ids [C, M, L] int32) for a batch with SAMPLE_KEYS."""
        keys = SAMPLE_KEYS + (("start_latents",) if self.start_step else ())
        missing = [k for k in keys if k not in batch]
        if missing:
            raise ValueError(f"generation batch: missing field(s) {missing}")
        self._check_rows(batch["uid"].shape[0])
        if self.dvbpr_users is not None and int(np.max(batch["uid"])) >= self.dvbpr_users:
            raise ValueError(f"DVBPR guidance: user id {int(np.max(batch['uid']))} >= the DVBPR model's num_users "
                             f"{self.dvbpr_users} (was it trained on this dataset?)")
        with self.traced():
            lat, ids = self._sample(self.states, {k: self._put(batch[k]) for k in keys})
        return self._get(lat), self._get(ids)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """latents [C, N, h, w, ch] -> uint8 images [C, N, S, S, 3]."""
        self._check_rows(latents.shape[0])
        with self.traced():
            out = self._decode(self.states, self._put(latents))
        return self._get(out)


def caption_image(mode: str, ctx: jax.Array, lat: jax.Array, n: int, m: int) -> jax.Array | None:
    """The caption branch's image stream for C chains x M captions, [C*M, h, w, ch] (None: the null tokens):
    the context mean [C, h, w, ch] (the original), or caption j reads generated image j % N of lat [C*N, ...]."""
    if mode == "context":
        return jnp.repeat(ctx, m, axis=0)
    if mode == "null":
        return None
    if mode == "generated":
        own = lat.reshape((-1, n) + lat.shape[1:])[:, np.arange(m) % n]  # [C, M, h, w, ch]
        return own.reshape((-1,) + lat.shape[1:])
    raise ValueError(f"caption image stream {mode!r}: expected one of context, generated, null")


def pad_rows(batch: Mapping[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Pads every [C, ...] array to `size` rows by repeating row 0 (results of padded rows are discarded)."""
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        if v.shape[0] > size:
            raise ValueError(f"pad_rows: {k} has {v.shape[0]} rows > batch size {size}")
        out[k] = np.concatenate([v, np.repeat(v[:1], size - v.shape[0], axis=0)]) if v.shape[0] < size else v
    return out
