"""Build or load a model from a config or a checkpoint (layer 4: above conversion, below data).

  transformer  the DualMMDiT: its config from a training config (`mmdit_config`), or loaded from a converted /
               diffusers checkpoint (`load_transformer`, used by `api.DualFashionTransformer.from_pretrained`)
  frozen       the frozen T5 / VAE of a run: converted weights or a seeded random init (`frozen_spec`), and the
               one place a random demo encoder is saved to and found again (`<workdir>/frozen/<name>`)
  vae          loading a VAE checkpoint, the demo's pixel autoencoder included (`load_vae`, `vae_factory`)
  latents      uint8 / [0, 1] images -> model-space VAE latents (`encode_images`)
  restore      a module from flat params without a random init (`module_from_flat`), or jitted (`build_jitted`)
  params       host params of a training checkpoint (`load_params`)
  api          `DualFashionTransformer`, the PyTorch-layout drop-in wrapper
"""
