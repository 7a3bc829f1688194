"""Span-corruption pretraining of a small T5 v1.1 encoder-decoder on token sequences; keeps the encoder.

The demo's stand-in for T5-XXL (docs/demo.md, "A stand-in T5 that has learned the demo's language"): a random
encoder maps every masked caption slot to the same vector, a pretrained one keeps the slots apart. One jitted
optax AdamW step (warm-up + cosine) on batches drawn by a seeded NumPy generator (`text/span_corruption.py`);
the encoder is saved in the converted-T5 format, so training and generation load it like a converted T5-XXL.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx

from dualfashion_jax.core import converted, params as core_params
from dualfashion_jax.models import t5, t5_decoder
from dualfashion_jax.samplers import templates
from dualfashion_jax.text import span_corruption
from dualfashion_jax.training.optim import lr_schedule


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Span-corruption pretraining knobs (T5's objective: noise density 0.15, mean span 3)."""

    steps: int = 300
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 50
    weight_decay: float = 0.0
    input_length: int = 36          # tokens per span-corrupted input (EOS included); longer texts are cut
    target_length: int = 12         # a 35-token text: 5 noise tokens in 2 spans + 2 sentinels + EOS
    mlm_weight: float = 1.0         # the masked-slot term (see `loss_fn`); 0 = span corruption only
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size", "input_length", "target_length"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"PretrainConfig.{name}: expected a positive int, got {v!r}")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"PretrainConfig.warmup_steps: expected 0 <= warmup < steps ({self.steps}), "
                             f"got {self.warmup_steps}")


@dataclasses.dataclass(frozen=True)
class Special:
    """The tokenizer ids the objective needs (T5 layout: `<extra_id_0>` is the highest id)."""

    first_sentinel: int
    eos_id: int
    pad_id: int = 0  # T5's decoder start id and target padding

    @classmethod
    def of(cls, tokenizer) -> "Special":
        """From a `text.tokenizer.CaptionTokenizer` (its MASK id is `<extra_id_0>`)."""
        return cls(first_sentinel=tokenizer.mask_id, eos_id=tokenizer.eos_id)


def _masked_mean(x: jax.Array, w: jax.Array) -> jax.Array:
    w = w.astype(jnp.float32)
    return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)


def loss_fn(model: t5_decoder.T5EncoderDecoder, batch: dict[str, jax.Array], mlm_weight: float) -> jax.Array:
    """Span-corruption cross entropy of the targets (padding excluded) + `mlm_weight` x the masked-slot term: the
    encoder output at each `<extra_id_0>` of `mlm_inputs` (the demo's MASK, i.i.d. per token) predicts the token
    it hides through the tied embedding. The decoder can read a masked slot's identity from its neighbours, so span
    corruption alone leaves every MASK vector alike (cosine 0.9999); the caption diffusion reads T5 at the MASKs."""
    logits = model(batch["inputs"], batch["input_mask"], t5_decoder.shift_right(batch["targets"]))  # [B, T, V]
    span = _masked_mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]),
                        batch["target_mask"])
    if not mlm_weight:
        return span
    h = model.encoder(batch["mlm_inputs"], batch["input_mask_full"])  # [B, S, D]
    scale = h.shape[-1] ** -0.5  # T5's tied-head rescale of the final states
    mlm_logits = jnp.einsum("bsd,vd->bsv", h.astype(jnp.float32) * scale, model.encoder.shared.embedding[...])
    mlm = _masked_mean(optax.softmax_cross_entropy_with_integer_labels(mlm_logits, batch["full"]), batch["mlm_mask"])
    return span + mlm_weight * mlm


def mlm_view(sequences: Sequence[np.ndarray], rng: np.random.Generator, *, mask_id: int, eos_id: int, pad_id: int,
             length: int) -> dict[str, np.ndarray]:
    """The masked-slot term's batch: the EOS-terminated texts [B, length] (`full`, `input_mask_full`), and a copy
    with each token but EOS replaced by `mask_id` with a per-text rate ~ U(0, 1) (`mlm_inputs`, `mlm_mask`), as the
    caption diffusion masks its values."""
    b = len(sequences)
    full, valid = np.full((b, length), pad_id, np.int32), np.zeros((b, length), np.int32)
    for i, seq in enumerate(sequences):
        x = np.append(np.asarray(seq)[:length - 1], eos_id)
        full[i, :len(x)], valid[i, :len(x)] = x, 1
    rate = rng.random((b, 1))
    mask = (rng.random((b, length)) < rate) & (valid == 1) & (full != eos_id)
    return {"full": full, "input_mask_full": valid, "mlm_inputs": np.where(mask, mask_id, full).astype(np.int32),
            "mlm_mask": mask.astype(np.int32)}


def _batches(sequences: Sequence[np.ndarray], pcfg: PretrainConfig, special: Special):
    """An endless stream of span-corrupted batches, deterministic from `pcfg.seed`."""
    rng = np.random.default_rng(pcfg.seed)
    while True:
        seqs = [sequences[i] for i in rng.integers(0, len(sequences), pcfg.batch_size)]
        batch = span_corruption.make_batch(
            seqs, rng, first_sentinel=special.first_sentinel, eos_id=special.eos_id, pad_id=special.pad_id,
            input_length=pcfg.input_length, target_length=pcfg.target_length, noise_density=pcfg.noise_density,
            mean_noise_span_length=pcfg.mean_noise_span_length)
        if pcfg.mlm_weight:
            batch.update(mlm_view(seqs, rng, mask_id=special.first_sentinel, eos_id=special.eos_id,
                                  pad_id=special.pad_id, length=pcfg.input_length))
        yield batch


def pretrain(sequences: Sequence[np.ndarray], cfg: t5.T5Config, pcfg: PretrainConfig, special: Special, *,
             key: jax.Array, progress: bool = True) -> tuple[t5.T5Encoder, list[float]]:
    """Trains a `T5EncoderDecoder` (init from `key`) on span-corrupted `sequences` (token ids, no EOS);
    returns (the encoder, the per-step losses)."""
    if not sequences:
        raise ValueError("t5_pretrain.pretrain: no token sequences to train on")
    if max(max(int(np.max(s)) for s in sequences if len(s)), special.first_sentinel) >= cfg.vocab_size:
        raise ValueError(f"t5_pretrain.pretrain: token ids reach {special.first_sentinel}, beyond the T5 config's "
                         f"vocab_size {cfg.vocab_size}")
    model = t5_decoder.T5EncoderDecoder(cfg, rngs=nnx.Rngs(params=key))
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optax.adamw(lr_schedule(pcfg.lr, pcfg.warmup_steps, "cosine", pcfg.steps), b1=0.9, b2=0.98,
                     weight_decay=pcfg.weight_decay)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(nnx.merge(graphdef, p), batch, pcfg.mlm_weight))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    stream = _batches(sequences, pcfg, special)
    bar = tqdm.tqdm(range(pcfg.steps), desc="t5 span corruption", disable=not progress, mininterval=2.0)
    for _ in bar:
        params, opt_state, loss = step(params, opt_state, next(stream))
        losses.append(loss)
        if len(losses) % 50 == 0:
            bar.set_postfix(loss=f"{float(loss):.3f}")
    model = nnx.merge(graphdef, params)
    return model.encoder, [float(x) for x in jax.device_get(losses)]


def save_encoder(encoder: t5.T5Encoder, out_dir: str | os.PathLike, extra: dict | None = None) -> pathlib.Path:
    """The encoder in the converted-T5 format (`core.converted`, kind "t5"): loads like a converted T5-XXL."""
    flat = {k: np.asarray(jax.device_get(v)) for k, v in core_params.flat_view(nnx.state(encoder, nnx.Param)).items()}
    return converted.save_converted(out_dir, kind="t5", config=encoder.cfg.to_dict(), params=flat,
                                    extra={"note": "span-corruption pretrained (training/t5_pretrain.py)",
                                           **(extra or {})})


def masked_slot_cosine(encoder: t5.T5Encoder, tokenizer, value_length: int = 2) -> float:
    """Mean cosine between the encoder outputs of MASK tokens in different slots of the caption template
    (`value_length` MASKs per value): ~1 when the slots are indistinguishable (a random small T5: ~0.999)."""
    tpl = templates.budget_template(tokenizer, value_length)
    h = encoder(jnp.asarray(tpl.ids)[None], jnp.asarray(tpl.attention_mask)[None])[0]  # [L, D]
    runs = templates.value_runs(tpl.label_mask)
    v = np.asarray(h, np.float64)
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    cos = [float(v[i] @ v[j]) for a, (s0, e0) in enumerate(runs) for (s1, e1) in runs[a + 1:]
           for i in range(s0, e0) for j in range(s1, e1)]
    return float(np.mean(cos))


def train_and_save(texts: Sequence[str], tokenizer, cfg: t5.T5Config, pcfg: PretrainConfig,
                   out_dir: str | os.PathLike, *, progress: bool = True) -> dict:
    """Pretrains on the unique `texts` (tokenized without EOS; init key from `pcfg.seed`), saves the encoder to
    `out_dir` (converted T5) and returns its summary (also in `out_dir/config.json`)."""
    texts = sorted(set(texts))
    seqs = [np.asarray(x, np.int64) for x in tokenizer.hf(texts, add_special_tokens=False)["input_ids"]]
    enc, losses = pretrain(seqs, cfg, pcfg, Special.of(tokenizer), key=jax.random.key(pcfg.seed), progress=progress)
    summary = {"texts": len(texts), "pretrain": dataclasses.asdict(pcfg), "loss_first10": float(np.mean(losses[:10])),
               "loss_last10": float(np.mean(losses[-10:])), "masked_slot_cosine": masked_slot_cosine(enc, tokenizer)}
    save_encoder(enc, out_dir, extra=summary)
    return summary
