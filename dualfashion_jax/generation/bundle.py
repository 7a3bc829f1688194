"""`Bundle`: everything generation needs (MMDiT, frozen T5 and VAE, tokenizer, caption length budget), loaded
from a training workdir or from converted checkpoints, with clear errors when the pieces do not fit.

Sources, in this order:
  training workdir  `<dir>/{config.json, model_config.json, checkpoints/<step>/state}`: the model is rebuilt from
                    the MMDiT config training saved (older workdirs: from the training config, as
                    `modeling.transformer.mmdit_config` builds it); params = the EMA (default) or the raw
                    params of the newest restorable step. T5/VAE: `modeling.frozen.load_frozen` (the config's
                    converted checkpoint, else the random init training saved to `<dir>/frozen/<name>`, else
                    the same seeded random init training used).
  converted         `<dir>/{transformer, t5, vae, tokenizer}` (`dualfashion-jax convert ...` outputs + the T5
                    tokenizer folder), or `<dir>` = the converted transformer with t5=/vae=/tokenizer= given.
Caption model (`with_captioner`, opt-in): the caption branch may run another stage-3 model with its own T5 (e.g. a
caption model fine-tuned on a pretrained stand-in T5 while the images keep the random-T5 model, docs/demo_captions.md);
it must share the tokenizer, the latent shape and the VAE.
Caption template budget (`value_lengths`): the median value token length per attribute over the dataset's
item captions (samplers/templates.py), else DEFAULT_VALUE_LENGTH tokens per value.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import warnings
from typing import Any

import jax
import ml_collections as mlc
import numpy as np
from flax import nnx

from dualfashion_jax.core import keys, params as core_params
from dualfashion_jax.data.format import SafeDataset
from dualfashion_jax.modeling import frozen as frozen_lib, params as params_lib, restore, transformer
from dualfashion_jax.models import mmdit, t5 as t5_lib, vae as vae_lib
from dualfashion_jax.samplers.templates import median_value_lengths
from dualfashion_jax.text.tokenizer import CaptionTokenizer, caption_json

log = logging.getLogger(__name__)
DEFAULT_VALUE_LENGTH = 4
MAX_BUDGET_CAPTIONS = 2000  # captions tokenized to estimate the per-attribute median length


BundleError = restore.MismatchError  # a checkpoint, its config and the T5/VAE/tokenizer do not fit together


@dataclasses.dataclass
class Bundle:
    """A generation-ready model set. `info` records provenance (written to settings.json)."""

    model: mmdit.DualMMDiT
    t5: t5_lib.T5Encoder
    vae: vae_lib.AutoencoderKL
    tokenizer: CaptionTokenizer
    value_lengths: dict[str, int] | int = DEFAULT_VALUE_LENGTH
    data_dir: str | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    captioner: tuple[mmdit.DualMMDiT, t5_lib.T5Encoder] | None = None  # the caption branch's (model, T5); None: ours

    def __post_init__(self):
        check_compatible(self.model, self.t5, self.vae, self.tokenizer, where=self.info.get("source", "bundle"))

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.model.config.latent_hw

    @property
    def image_size(self) -> int:
        """Pixel side of generated images (and of the context images fed to the VAE)."""
        return self.latent_hw[0] * self.vae.cfg.downsample_factor


def check_compatible(model, t5, vae, tok, *, where: str) -> None:
    """T5 width = MMDiT context width, VAE channels = latent channels, tokenizer ids fit both vocabularies."""
    mc = model.config
    errs = []
    if t5.cfg.d_model != mc.joint_attention_dim:
        errs.append(f"T5 d_model {t5.cfg.d_model} != MMDiT joint_attention_dim {mc.joint_attention_dim}")
    if vae.cfg.latent_channels != mc.in_channels:
        errs.append(f"VAE latent_channels {vae.cfg.latent_channels} != MMDiT in_channels {mc.in_channels}")
    if tok.vocab_size > mc.vocab_size:
        errs.append(f"tokenizer vocab {tok.vocab_size} ({tok.source}) > MMDiT text-head vocab {mc.vocab_size}")
    if tok.vocab_size > t5.cfg.vocab_size:
        errs.append(f"tokenizer vocab {tok.vocab_size} ({tok.source}) > T5 embedding rows {t5.cfg.vocab_size}")
    if errs:
        raise BundleError(f"{where}: checkpoint/config mismatch: " + "; ".join(errs))


def with_captioner(bundle: Bundle, other: Bundle) -> Bundle:
    """`bundle` whose caption branch runs `other`'s model and T5 (same tokenizer ids, latent shape and VAE weights
    required: the caption model reads the image model's latents)."""
    a, b = bundle.tokenizer, other.tokenizer
    probe = ['{"Color": "navy blue", "Material": "polka dot chiffon"}']
    errs = []
    if (a.vocab_size, a.mask_id) != (b.vocab_size, b.mask_id) or not np.array_equal(a.encode(probe)[0],
                                                                                  b.encode(probe)[0]):
        errs.append(f"tokenizer {b.source} != {a.source}")
    ca, cb = bundle.model.config, other.model.config
    if (ca.latent_hw, ca.in_channels) != (cb.latent_hw, cb.in_channels):
        errs.append(f"latent {cb.latent_hw} x {cb.in_channels} != {ca.latent_hw} x {ca.in_channels}")
    va, vb = (jax.tree.leaves(nnx.state(m.vae)) for m in (bundle, other))
    if len(va) != len(vb) or any(x.shape != y.shape or not np.array_equal(x, y) for x, y in zip(va, vb)):
        errs.append("VAE weights differ")
    if errs:
        raise BundleError(f"caption model {other.info.get('source', '<in-memory>')}: does not fit the image model "
                          f"{bundle.info.get('source', '<in-memory>')}: " + "; ".join(errs))
    info = {**bundle.info, "caption_model": {k: other.info.get(k) for k in ("source", "step", "ema", "t5")}}
    return dataclasses.replace(bundle, captioner=(other.model, other.t5), info=info)


# --------------------------------------------------------------------------------------------------- entry
def load_bundle(checkpoint: str | pathlib.Path, *, ema: bool = True, data: str | None = None,
                t5: str | None = None, vae: str | None = None, tokenizer: str | None = None,
                dtype: str | None = None) -> Bundle:
    """Loads a training workdir or converted checkpoints (see module docstring); `dtype` overrides compute."""
    p = pathlib.Path(checkpoint)
    if not p.is_dir():
        raise FileNotFoundError(f"--checkpoint {p}: folder not found")
    if (p / "checkpoints").is_dir():
        b = _from_workdir(p, ema=ema, data=data, t5=t5, vae=vae, tokenizer=tokenizer, dtype=dtype)
    elif (p / "transformer" / "config.json").is_file() or _kind(p) == "mmdit":
        b = _from_converted(p, data=data, t5=t5, vae=vae, tokenizer=tokenizer, dtype=dtype)
    else:
        raise FileNotFoundError(f"--checkpoint {p}: neither a training workdir (config.json + checkpoints/) nor a "
                                "converted checkpoint (config.json of kind 'mmdit', or transformer/ t5/ vae/ tokenizer/)")
    b.value_lengths, b.info["value_lengths_source"] = value_lengths_from_data(b.tokenizer, b.data_dir)
    return b


def _kind(p: pathlib.Path) -> str | None:
    f = p / "config.json"
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text()).get("kind")
    except (json.JSONDecodeError, AttributeError):
        return None


def value_lengths_from_data(tok: CaptionTokenizer, data_dir: str | None) -> tuple[dict[str, int] | int, str]:
    """Median value lengths over (up to MAX_BUDGET_CAPTIONS) item captions of the dataset, else the default."""
    if data_dir and (pathlib.Path(data_dir) / "text" / "item_info.json").is_file():
        info = SafeDataset(data_dir).item_info
        iids = sorted(info)
        step = max(1, len(iids) // MAX_BUDGET_CAPTIONS)
        caps = [caption_json(info[i]["elements"]) for i in iids[::step]]
        try:
            return median_value_lengths(tok, caps), f"median over {len(caps)} item captions of {data_dir}"
        except ValueError as e:
            log.warning("caption budget: %s; using %d tokens per value", e, DEFAULT_VALUE_LENGTH)
    return DEFAULT_VALUE_LENGTH, f"default {DEFAULT_VALUE_LENGTH} tokens per value (no item_info.json)"


# --------------------------------------------------------------------------------------------------- workdir
def _params_from_workdir(wd: pathlib.Path, ema: bool) -> tuple[int, dict[str, np.ndarray], bool]:
    """(step, flat params, used_ema) of the newest restorable checkpoint; falls back to raw params without EMA."""
    used_ema = ema
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", params_lib.CorruptCheckpointWarning)
            step, tree = params_lib.load_params(wd, use_ema=ema)
    except FileNotFoundError:
        if not ema:
            raise
        warnings.warn(f"{wd}: checkpoint has no EMA (e.g. stage 3); using the raw params", stacklevel=3)
        step, tree = params_lib.load_params(wd, use_ema=False)
        used_ema = False
    return step, keys.flatten(tree), used_ema


def _saved_model_config(path: pathlib.Path):
    """The MMDiT config training saved next to its checkpoints."""
    try:
        return transformer.saved_model_config(path)
    except json.JSONDecodeError as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from None


def _rebuilt_model_config(config, data_dir: pathlib.Path, vae_mod, tok: CaptionTokenizer):
    """The MMDiT config as training builds it (workdirs written before model_config.json)."""
    latent_hw = None
    if config.model.get("latent_from_data"):
        lat = data_dir / "latents" / "latents.npy"
        if lat.is_file():
            latent_hw = tuple(int(x) for x in np.load(lat, mmap_mode="r").shape[1:3])
        else:
            size = SafeDataset(data_dir).image_size
            if not size:
                raise BundleError(f"{data_dir}/meta.json: image_size unset; the workdir's model takes its latent "
                                  "size from the dataset (config.model.latent_from_data), pass --data")
            f = vae_mod.cfg.downsample_factor
            latent_hw = (size // f, size // f)
    return transformer.mmdit_config(config, vocab_size=tok.vocab_size if config.model.get("vocab_from_tokenizer")
                                    else None, latent_hw=latent_hw)


def _from_workdir(wd: pathlib.Path, *, ema, data, t5, vae, tokenizer, dtype) -> Bundle:
    raw = frozen_lib.workdir_config(wd)
    for k in ("stage", "model", "t5", "vae", "data"):
        if k not in raw:
            raise BundleError(f"{wd / 'config.json'}: field {k!r} missing (not a stage-1/2/3 training config)")
    config = mlc.ConfigDict(raw)
    tok_dir = frozen_lib.workdir_path(tokenizer or config.data.tokenizer, wd)
    tok = CaptionTokenizer.from_pretrained(tok_dir, max_length=int(config.data.max_length))
    data_dir = frozen_lib.workdir_path(data or config.data.dir, wd)
    vae_mod, vae_src = frozen_lib.load_frozen("vae", config, wd, explicit=vae)
    t5_mod, t5_src = frozen_lib.load_frozen("t5", config, wd, explicit=t5, min_vocab=tok.vocab_size)
    saved = wd / transformer.MODEL_CONFIG  # written by training; older workdirs: rebuilt from the config + dataset
    mcfg = _saved_model_config(saved) if saved.is_file() else _rebuilt_model_config(config, data_dir, vae_mod, tok)
    if dtype:
        mcfg = dataclasses.replace(mcfg, dtype=dtype)
    step, flat, used_ema = _params_from_workdir(wd, ema)
    model = restore.module_from_flat(lambda: mmdit.DualMMDiT(mcfg, rngs=nnx.Rngs(0)), flat,
                                     source=f"{wd}/checkpoints/{step} ({'ema' if used_ema else 'params'})")
    info = {"source": str(wd), "kind": "workdir", "stage": config.stage, "step": step, "ema": used_ema,
            "t5": t5_src, "vae": vae_src, "tokenizer": str(tok_dir)}
    return Bundle(model, t5_mod, vae_mod, tok, data_dir=str(data_dir), info=info)


# --------------------------------------------------------------------------------------------------- converted
def _from_converted(root: pathlib.Path, *, data, t5, vae, tokenizer, dtype) -> Bundle:
    tdir = root / "transformer" if (root / "transformer" / "config.json").is_file() else root
    parts = {"t5": t5 or root / "t5", "vae": vae or root / "vae", "tokenizer": tokenizer or root / "tokenizer"}
    for name, d in parts.items():
        if not pathlib.Path(d).is_dir():
            raise FileNotFoundError(f"{d}: {name} folder not found (converted layout: {root}/{{transformer, t5, vae, "
                                    f"tokenizer}}, or pass --{name})")
    try:
        model = transformer.load_transformer(tdir, **({"dtype": dtype} if dtype else {}))
    except core_params.ConversionError as e:
        raise BundleError(f"{tdir}: checkpoint/config mismatch:\n{e}") from None
    tok = CaptionTokenizer.from_pretrained(parts["tokenizer"])
    info = {"source": str(root), "kind": "converted", "ema": None, "t5": str(parts["t5"]), "vae": str(parts["vae"]),
            "tokenizer": str(parts["tokenizer"])}
    return Bundle(model, frozen_lib.load_pretrained("t5", parts["t5"]), frozen_lib.load_pretrained("vae", parts["vae"]),
                  tok, data_dir=str(data) if data else None, info=info)
