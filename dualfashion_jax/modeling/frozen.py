"""The frozen T5 / VAE of a run: converted weights (`config.<name>.checkpoint`) or a seeded random init (demo).

A seeded random encoder has one place on disk: training saves it once to `<workdir>/frozen/<name>` (conversion
format, `save_random`), so generation uses exactly the encoder the model was trained with. `load_frozen` looks,
in order: an explicit folder, the config's checkpoint, `<workdir>/frozen/<name>`, the same folder of the
`init_from` workdirs (runs that could not save it: multi-process), and last the seeded init itself.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dualfashion_jax.conversion import t5 as conv_t5
from dualfashion_jax.core import converted, params as core_params
from dualfashion_jax.modeling import restore
from dualfashion_jax.modeling.transformer import dtype as dtype_of
from dualfashion_jax.modeling.vae import load_vae, vae_factory
from dualfashion_jax.models import t5, vae

log = logging.getLogger(__name__)
FROZEN_DIR = "frozen"  # <workdir>/frozen/<name>: a random frozen module, saved by training
KINDS = {"t5": t5, "vae": vae}


@dataclasses.dataclass
class Frozen:
    """A frozen module (T5, VAE): built by `factory`, weights from converted `params` (flat "a/b/kernel"
    numpy dict) or, when None, the factory's own (seeded) random init. Never in the optimizer."""
    factory: Callable[[], nnx.Module]
    params: Mapping[str, Any] | None = None
    source: str = ""
    kind: str = ""                           # conversion kind ("t5", "vae") for `save_converted`
    config: Mapping[str, Any] | None = None  # its config dict; a random init is saved to <workdir>/frozen/<name>


def converted_spec(kind: str, folder: str | os.PathLike, dtypes: Mapping[str, str]) -> tuple[Frozen, Any]:
    """Spec + config of a converted T5/VAE checkpoint folder, its dtypes replaced by `dtypes` (names)."""
    meta, flat = converted.load_converted(folder, kind=kind)
    source = f"{folder}/config.json"
    if kind == "vae":
        factory, cfg = vae_factory(meta["config"], source=source, dtypes=dtypes)
    else:
        cfg = t5.T5Config.from_dict({**meta["config"], **dtypes}, source=source)
        factory = lambda: t5.T5Encoder(cfg, rngs=nnx.Rngs(0))  # noqa: E731
    return Frozen(factory, flat, str(folder)), cfg


def frozen_spec(kind: str, block, seed: int, min_vocab: int = 0) -> tuple[Frozen, Any]:
    """Frozen T5/VAE spec + its config: converted weights from `block.checkpoint`, else seeded random init."""
    over = {"dtype": dtype_of(block.dtype, f"config.{kind}.dtype"),  # frozen: bf16 storage loses nothing it trains
            "param_dtype": dtype_of(block.get("param_dtype", "float32"), f"config.{kind}.param_dtype")}
    if block.get("checkpoint"):
        return converted_spec(kind, block.checkpoint, {k: jnp.dtype(v).name for k, v in over.items()})
    mod = KINDS[kind]
    over.update(dict(block.get("overrides", {}) or {}))
    if kind == "t5" and "vocab_size" not in over:  # a random demo encoder must embed every tokenizer id
        over["vocab_size"] = max(mod.get_config(block.preset).vocab_size, min_vocab)
    cfg = mod.get_config(block.preset, **over)
    cls = t5.T5Encoder if kind == "t5" else vae.AutoencoderKL
    return Frozen(lambda: cls(cfg, rngs=nnx.Rngs(seed)), None, f"random {kind} (seed {seed})", kind,
                  cfg.to_dict()), cfg


def save_random(workdir: str, name: str, fz: Frozen, state: nnx.State) -> None:
    """A randomly initialised frozen module (demo T5/VAE) is saved once to <workdir>/frozen/<name>
    (`core.converted` format), so generation uses exactly the encoder the model was trained with."""
    out = os.path.join(workdir, FROZEN_DIR, name)
    if not fz.kind or fz.config is None or os.path.exists(os.path.join(out, "config.json")):
        return
    if jax.process_count() > 1:  # shards live on several hosts; demo-only feature
        log.warning("random frozen %s not saved (multi-process run); generation must rebuild it from the config",
                    name)
        return
    flat = {k: np.asarray(jax.device_get(v)) for k, v in core_params.flat_view(state).items()}
    if jax.process_index() == 0:
        converted.save_converted(out, kind=fz.kind, config=fz.config, params=flat,
                                 extra={"note": f"random init ({fz.source}); saved by dualfashion-jax train"})


def workdir_path(path: str, workdir: pathlib.Path) -> pathlib.Path:
    """A path from a training config: as written (cwd-relative), else relative to the workdir's parent."""
    q = pathlib.Path(path)
    if q.exists() or q.is_absolute():
        return q
    alt = workdir.parent / q
    return alt if alt.exists() else q


def workdir_config(workdir: pathlib.Path) -> dict:
    """The training config a workdir holds (`<workdir>/config.json`)."""
    f = workdir / "config.json"
    if not f.is_file():
        raise FileNotFoundError(f"{f}: missing; a training workdir holds the config it was trained with")
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise restore.MismatchError(f"{f}: not valid JSON ({e})") from None


def load_pretrained(kind: str, folder: str | os.PathLike) -> nnx.Module:
    """A T5 encoder or VAE (float32) from a converted checkpoint or a transformers / diffusers folder."""
    return conv_t5.load(folder, dtype=jnp.float32, param_dtype=jnp.float32) if kind == "t5" else load_vae(folder)


def load_frozen(kind: str, config, workdir: pathlib.Path, *, explicit: str | None = None,
                min_vocab: int = 0) -> tuple[nnx.Module, str]:
    """(module, source): explicit dir > config checkpoint > <workdir>/frozen > init_from chain > seeded init."""
    block = config[kind]
    if explicit:
        return load_pretrained(kind, explicit), str(explicit)
    if block.get("checkpoint"):
        return load_pretrained(kind, workdir_path(block.checkpoint, workdir)), str(block.checkpoint)
    seen, cur = set(), workdir
    while cur is not None and cur not in seen:
        seen.add(cur)
        cand = cur / FROZEN_DIR / kind
        if (cand / "config.json").is_file():
            spec, _ = converted_spec(kind, cand, {"dtype": block.dtype})
            mod = restore.module_from_flat(spec.factory, spec.params, source=str(cand), what=kind.upper())
            return mod, str(cand)
        nxt = workdir_config(cur).get("init_from") if (cur / "config.json").is_file() else ""
        cur = workdir_path(nxt, cur) if nxt else None
    spec, _ = frozen_spec(kind, block, block.seed, min_vocab=min_vocab)  # the training's own random init
    return restore.build_jitted(spec.factory), f"seeded random init ({block.preset}, seed {block.seed}) as in training"
