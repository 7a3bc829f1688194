"""Shared fixtures' builders for the generation tests: a tiny synthetic dataset, a test tokenizer and a training
workdir (stage-2 demo config + an orbax checkpoint with raw and EMA params + saved frozen T5/VAE), made in
seconds without training (the layout is the one `training/train.py` writes)."""
import json
import os
import pathlib

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]


def make_world(root: pathlib.Path, num_users: int = 4) -> pathlib.Path:
    from dualfashion_jax.data.format import SafeDataset
    from dualfashion_jax.data.synthetic.make import make_dataset
    from dualfashion_jax.text import tokenizer as tk

    make_dataset(root / "data", seed=0, image_size=32, num_users=num_users, verbose=False)
    ds = SafeDataset(root / "data")
    texts = [json.dumps(v["elements"]) for v in ds.item_info.values()] + list(ds.categories.values())
    texts += ["Recommend a fashion item, on white background.", "low quality, blurry, low resolution"]
    tk.build_test_tokenizer(texts, root / "tokenizer", vocab_size=400, max_length=96)
    return root


def random_params(factory, seed: int, std: float = 0.05) -> dict:
    """Random flat params for factory()'s module from its abstract shapes (no jitted init: seconds, not minutes):
    norm scales 1, biases 0, everything else N(0, std)."""
    from dualfashion_jax.core import params as core_params

    rng = np.random.default_rng(seed)
    out = {}
    for k, a in sorted(core_params.abstract_params(factory).items()):
        leaf = k.rsplit("/", 1)[-1]
        if leaf in ("scale",) or k.endswith("norm/scale"):
            out[k] = np.ones(a.shape, np.float32)
        elif leaf == "bias":
            out[k] = np.zeros(a.shape, np.float32)
        else:
            out[k] = (std * rng.standard_normal(a.shape)).astype(np.float32)
    return out


def make_workdir(root: pathlib.Path, wd: pathlib.Path, ema_shift: float = 0.01) -> pathlib.Path:
    """A stage-2 workdir: config.json, checkpoints/1 (params, EMA = params + ema_shift), frozen/{t5,vae}."""
    import jax
    from flax import nnx

    from dualfashion_jax.core import converted
    from dualfashion_jax.modeling.frozen import frozen_spec
    from dualfashion_jax.modeling.restore import module_from_flat
    from dualfashion_jax.modeling.transformer import mmdit_config
    from dualfashion_jax.models import mmdit
    from dualfashion_jax.text.tokenizer import CaptionTokenizer
    from dualfashion_jax.core import config as config_lib
    from dualfashion_jax.training import checkpoint as ckpt_lib

    config = config_lib.load(os.fspath(REPO / "configs" / "stage2.py") +
                             f":tiny,data={root / 'data'},tokenizer={root / 'tokenizer'},max_length=96,init_from=")
    wd.mkdir(parents=True, exist_ok=True)
    cj = json.loads(config.to_json_best_effort())
    (wd / "config.json").write_text(json.dumps(cj, indent=1))
    tok = CaptionTokenizer.from_pretrained(root / "tokenizer", max_length=96)
    for kind in ("t5", "vae"):
        spec, cfg = frozen_spec(kind, config[kind], config[kind].seed, min_vocab=tok.vocab_size)
        converted.save_converted(wd / "frozen" / kind, kind=kind, config=cfg.to_dict(),
                                 params=random_params(spec.factory, seed=len(kind)))
    mcfg = mmdit_config(config, vocab_size=tok.vocab_size, latent_hw=(16, 16))
    factory = lambda: mmdit.DualMMDiT(mcfg, rngs=nnx.Rngs(0))  # noqa: E731
    model = module_from_flat(factory, random_params(factory, seed=0), source="random")
    _, params, _ = nnx.split(model, nnx.Param, ...)
    ema = jax.tree.map(lambda x: x + ema_shift, params)
    state = {"params": params, "ema": ema, "step": np.int32(1)}
    ck = ckpt_lib.Checkpointer(wd, keep=1, async_save=False)
    ck.save(1, state, {}, cj, wait=True)
    ck.close()
    return wd


def make_session_world(root: pathlib.Path, num_users: int = 3):
    """(root, workdir, bundle): the session tests' tiny world, its data re-made with appearance, a random model."""
    from dualfashion_jax.data.synthetic.make import make_dataset
    from dualfashion_jax.generation.bundle import load_bundle

    root = make_world(root, num_users=num_users)
    make_dataset(root / "data", seed=0, image_size=32, num_users=num_users, appearance=True, verbose=False)
    wd = make_workdir(root, root / "wd")
    return root, wd, load_bundle(wd, data=str(root / "data"))
