"""T5's span-corruption objective in NumPy: noise masks, sentinel inputs / targets, deterministic from a seed.

Mirrors `t5.data.preprocessors` (Raffel et al. 2020): `random_spans_noise_mask` splits a sequence into alternating
non-noise / noise spans (non-noise first; round(length * density) noise tokens in round(noise / mean_span) spans,
each segmentation a uniformly random composition), `noise_span_to_unique_sentinel` replaces every noise span of the
inputs by one sentinel and the target keeps the noise spans, each after its sentinel. Sentinels count down from
`<extra_id_0>` (the highest id in T5's layout), so span k gets `<extra_id_k>`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

MAX_SENTINELS = 100  # T5's extra ids


def _random_segmentation(rng: np.random.Generator, num_items: int, num_segments: int) -> np.ndarray:
    """Lengths [num_segments] (each >= 1, summing to num_items) of a uniformly random ordered partition."""
    first = np.zeros(num_items, np.int64)
    first[1 + rng.permutation(num_items - 1)[:num_segments - 1]] = 1  # segment starts after position 0
    return np.bincount(np.cumsum(first), minlength=num_segments)


def random_spans_noise_mask(length: int, rng: np.random.Generator, noise_density: float = 0.15,
                            mean_noise_span_length: float = 3.0) -> np.ndarray:
    """bool [length]: T5's noise mask (same counts and span structure as the reference; non-noise first)."""
    if length < 1:
        raise ValueError(f"random_spans_noise_mask: length must be >= 1, got {length}")
    if not 0.0 < noise_density < 1.0 or mean_noise_span_length < 1.0:
        raise ValueError(f"random_spans_noise_mask: need 0 < noise_density < 1 (got {noise_density}) and "
                         f"mean_noise_span_length >= 1 (got {mean_noise_span_length})")
    orig_length, length = length, max(length, 2)
    num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
    num_spans = max(int(round(num_noise / mean_noise_span_length)), 1)
    num_spans = min(num_spans, num_noise, length - num_noise)  # every span non-empty (the reference's short case)
    noise_lengths = _random_segmentation(rng, num_noise, num_spans)
    keep_lengths = _random_segmentation(rng, length - num_noise, num_spans)
    interleaved = np.stack([keep_lengths, noise_lengths], axis=1).reshape(-1)  # [2 * spans] keep, noise, ...
    span_id = np.repeat(np.arange(2 * num_spans), interleaved)  # [length]
    return (span_id % 2 == 1)[:orig_length]


def sentinel_ids(first_sentinel: int, n: int) -> np.ndarray:
    """Ids of `<extra_id_0..n-1>`: T5's layout counts down from `<extra_id_0>`."""
    if n > MAX_SENTINELS:
        raise ValueError(f"span corruption needs {n} sentinels; T5 has {MAX_SENTINELS} (<extra_id_0..99>)")
    return first_sentinel - np.arange(n)


def corrupt(tokens: np.ndarray, mask: np.ndarray, first_sentinel: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) of one sequence: noise spans -> one sentinel each in the inputs; the target lists each
    noise span after its sentinel (T5's noise / non-noise `span_to_unique_sentinel`). No EOS is added here."""
    tokens, mask = np.asarray(tokens), np.asarray(mask, bool)
    if tokens.shape != mask.shape or tokens.ndim != 1:
        raise ValueError(f"corrupt: tokens {tokens.shape} and mask {mask.shape} must be equal 1-d shapes")
    return _span_to_sentinel(tokens, mask, first_sentinel), _span_to_sentinel(tokens, ~mask, first_sentinel)


def _span_to_sentinel(tokens: np.ndarray, noise: np.ndarray, first_sentinel: int) -> np.ndarray:
    starts = noise & ~np.concatenate([[False], noise[:-1]])  # first token of each noise span
    sent = sentinel_ids(first_sentinel, int(starts.sum()))
    out = np.where(starts, 0, tokens)
    out[starts] = sent
    return out[~noise | starts]


def reconstruct(inputs: np.ndarray, targets: np.ndarray, first_sentinel: int) -> np.ndarray:
    """The original sequence from `corrupt`'s (inputs, targets): each input sentinel replaced by its target span."""
    spans: dict[int, list[int]] = {}
    cur = None
    for t in np.asarray(targets).tolist():
        if first_sentinel - MAX_SENTINELS < t <= first_sentinel:
            cur = spans.setdefault(t, [])
        elif cur is not None:
            cur.append(t)
    out: list[int] = []
    for t in np.asarray(inputs).tolist():
        out.extend(spans.get(t, [t]) if first_sentinel - MAX_SENTINELS < t <= first_sentinel else [t])
    return np.asarray(out, np.asarray(inputs).dtype)


def make_batch(sequences: Sequence[np.ndarray], rng: np.random.Generator, *, first_sentinel: int, eos_id: int,
               pad_id: int, input_length: int, target_length: int, noise_density: float = 0.15,
               mean_noise_span_length: float = 3.0) -> dict[str, np.ndarray]:
    """Span-corrupted, EOS-terminated, padded batch: inputs / input_mask [B, input_length], targets /
    target_mask [B, target_length] int32. Sequences are cut to leave room for the EOS (as T5 trims)."""
    b = len(sequences)
    out = {"inputs": np.full((b, input_length), pad_id, np.int32), "input_mask": np.zeros((b, input_length), np.int32),
           "targets": np.full((b, target_length), pad_id, np.int32),
           "target_mask": np.zeros((b, target_length), np.int32)}
    for i, seq in enumerate(sequences):
        seq = np.asarray(seq, np.int64)[:input_length - 1]
        mask = random_spans_noise_mask(len(seq), rng, noise_density, mean_noise_span_length)
        inp, tgt = corrupt(seq, mask, first_sentinel)
        for name, x, n in (("input", inp, input_length), ("target", tgt, target_length)):
            x = np.append(x[:n - 1], eos_id)
            out[f"{name}s"][i, :len(x)] = x
            out[f"{name}_mask"][i, :len(x)] = 1
    return out
