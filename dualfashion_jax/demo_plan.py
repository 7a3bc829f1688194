"""`DemoPlan`: the view of one demo size's configs (configs/demo.py:SIZE and configs/stage{1,2,3}.py:SIZE) that
`dualfashion-jax demo` runs and records in OUT/plan.json."""
from __future__ import annotations

import dataclasses

from dualfashion_jax.core import config as config_lib

MODEL_KEYS = ("num_layers", "num_heads", "head_dim", "matching_hidden", "patch_size")  # of the stage configs'
SIZES = {"default": "demo", "quality": "demo_quality", "fast": "demo_fast"}
T5_ENCODERS = ("pretrained", "random")


@dataclasses.dataclass(frozen=True)
class DemoPlan:
    """A view of one demo size's configs (`from_configs`): configs/demo.py:SIZE and configs/stage{1,2,3}.py:SIZE
    hold the values (tuned on a 2-core CPU, docs/demo.md); OUT/plan.json records every field but `size`."""

    num_users: int
    image_size: int
    vae_factor: int                    # space-to-depth factor: 32 px -> 8 x 8 x 16 latents
    vae_basis: str
    vae_channels: int                  # latent channels (= the MMDiT's in/out channels)
    vae_refiner: tuple                 # the learned decoder head: width, depth + `RefinerFit` knobs, (name, value)
    vocab_size: int                    # tokenizer (soft limit)
    max_length: int                    # tokens per text segment
    t5_preset: str                     # the frozen T5's architecture
    t5: str                            # "pretrained" (span corruption on the demo texts, OUT/t5) | "random"
    t5_pretrain: tuple                 # its `training.t5_pretrain.PretrainConfig` overrides, (name, value)
    model: tuple                       # MMDiT overrides, (name, value) in MODEL_KEYS order
    steps: tuple                       # stage 1, 2, 3
    batch: tuple
    lr: tuple
    lr_decay: tuple                    # `optim.decay` per stage
    preference_dropout: float          # stage 2's
    gen_rows: int                      # PFITB test rows (0 = the whole test split)
    gor_rows: int                      # GOR test outfits (0 = the whole test split)
    num_images: int
    image_steps: int
    caption_steps: int
    guidance: str
    scales: str
    match_train_input: bool
    caption_cond: str
    caption_image: str                 # the caption branch's image stream (`generate --caption-image`)
    caption_temperature: float         # caption token temperature (0 = argmax tokens)
    caption_order: str                 # which masked caption positions a step commits (`generate --caption-order`)
    caption_image_scale: float         # caption guidance toward its image (`generate --caption-image-scale`)
    caption_image_keys: str            # the caption values it guides (`generate --caption-image-keys`)
    rows_per_batch: int
    metrics: str                       # PFITB
    gor_metrics: str
    size: str = "demo"

    @classmethod
    def from_configs(cls, size: str = "demo") -> "DemoPlan":
        d = config_lib.load(f"demo.py:{size}")
        st = [config_lib.load(f"stage{s}.py:{size}") for s in (1, 2, 3)]
        g, t = d.generate, dict(d.t5)
        ch = d.vae.latent_channels
        if any((c.model.overrides.get("in_channels"), c.model.overrides.get("out_channels")) != (ch, ch) for c in st):
            raise ValueError(f"configs/stage{{1,2,3}}.py:{size}: model.overrides in_channels / out_channels must equal "
                             f"configs/demo.py:{size} vae.latent_channels ({ch})")
        if t.get("encoder") not in T5_ENCODERS:
            raise ValueError(f"configs/demo.py:{size}: t5.encoder must be one of {T5_ENCODERS}, "
                             f"got {t.get('encoder')!r}")
        return cls(num_users=d.data.num_users, image_size=d.data.image_size, vae_factor=d.vae.factor,
                   vae_basis=d.vae.basis, vae_channels=ch, vae_refiner=tuple(sorted(d.vae.get("refiner", {}).items())),
                   vocab_size=d.tokenizer.vocab_size,
                   max_length=st[0].data.max_length,
                   t5_preset=st[0].t5.preset, t5=t.pop("encoder"), t5_pretrain=tuple(sorted(t.items())),
                   model=tuple((k, st[0].model.overrides[k]) for k in MODEL_KEYS),
                   steps=tuple(c.total_steps for c in st), batch=tuple(c.batch_size for c in st),
                   lr=tuple(c.optim.lr for c in st), lr_decay=tuple(c.optim.decay for c in st),
                   preference_dropout=st[1].loss.preference_dropout, gen_rows=g.max_rows, gor_rows=g.gor_max_rows,
                   num_images=g.num_images,
                   image_steps=g.image_steps, caption_steps=g.caption_steps, guidance=g.guidance, scales=g.scales,
                   match_train_input=g.match_train_input, caption_cond=g.caption_cond,
                   caption_image=g.caption_image, caption_temperature=float(g.caption_temperature),
                   caption_order=g.caption_order, caption_image_scale=float(g.caption_image_scale),
                   caption_image_keys=g.caption_image_keys,
                   rows_per_batch=g.rows_per_batch, metrics=d.evaluate.pfitb_metrics,
                   gor_metrics=d.evaluate.gor_metrics, size=size)

    @classmethod
    def default(cls) -> "DemoPlan":
        return cls.from_configs(SIZES["default"])

    @classmethod
    def quality(cls) -> "DemoPlan":
        """The tuned full demo (`demo --quality`): 2.3x the default's stage-2 steps, 14-21 min with the install."""
        return cls.from_configs(SIZES["quality"])

    @classmethod
    def fast(cls) -> "DemoPlan":
        return cls.from_configs(SIZES["fast"])

    def record(self) -> dict:
        """What OUT/plan.json keeps: the knobs (not the size name, nor the T5 fields for the random T5, nor 16 latent
        channels, nor unguided captions' guidance fields, so folders made before them stay valid; a pretrained-T5
        folder records them and is another plan)."""
        d = dataclasses.asdict(self)
        del d["size"]
        if self.vae_channels == 16:
            del d["vae_channels"]
        if not self.vae_refiner:
            del d["vae_refiner"]
        if self.t5 == "random":
            del d["t5"], d["t5_pretrain"]
        if not self.caption_image_scale:  # unguided captions (folders made before the fields)
            del d["caption_image_scale"], d["caption_image_keys"]
        return d
