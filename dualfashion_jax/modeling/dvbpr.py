"""A trained DVBPR model from its training workdir: `<workdir>/model_config.json` + the newest checkpoint's params."""
from __future__ import annotations

import json
import pathlib

from flax import nnx

from dualfashion_jax.core import keys
from dualfashion_jax.modeling import params as params_lib, restore
from dualfashion_jax.modeling.transformer import MODEL_CONFIG
from dualfashion_jax.models.dvbpr import DVBPR, DVBPRConfig


def load_config(workdir: str | pathlib.Path) -> DVBPRConfig:
    """The DVBPRConfig training saved in `workdir` (a missing file or an MMDiT config is a clear error)."""
    p = pathlib.Path(workdir) / MODEL_CONFIG
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found: is {workdir} a DVBPR training workdir (configs/dvbpr.py)?")
    return DVBPRConfig.from_dict(json.loads(p.read_text()), source=f"{p} (expected a DVBPR workdir)")


def load_dvbpr(workdir: str | pathlib.Path) -> tuple[DVBPR, int]:
    """(model, step) of the newest restorable checkpoint in `workdir` (params, not EMA: DVBPR trains without)."""
    cfg = load_config(workdir)
    step, tree = params_lib.load_params(workdir, use_ema=False)
    model = restore.module_from_flat(lambda: DVBPR(cfg, rngs=nnx.Rngs(0)), keys.flatten(tree),
                                     source=str(workdir), what="DVBPR model")
    return model, step
