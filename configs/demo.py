"""`dualfashion-jax demo`'s own knobs (docs/demo.md): dataset, stand-in VAE, tokenizer, generation, evaluation.
Training reads the stage configs at the same size (`stage{1,2,3}.py:SIZE,out=OUT`); `demo.DemoPlan` is the view
of both. Sizes: demo (the default: 10-11.5 min with the install on a 2-core CPU, docs/demo.md), demo_quality
(`--quality`: longer stages 1 and 2, 14-21 min), demo_fast (`--fast`: a tiny run for the tests).
"""
import ml_collections as mlc

from dualfashion_jax.core import config as cc

common = cc.sibling(__file__, "common")

SIZES = ("demo", "demo_quality", "demo_fast")


def get_config(arg=None):
    size = arg or "demo"
    if size not in SIZES:
        raise ValueError(f"config arg {arg!r}: expected a size, one of {list(SIZES)}")
    fast = size == "demo_fast"
    c = mlc.ConfigDict()
    c.data = dict(num_users=16 if fast else 160, image_size=32)
    # space-to-depth pixel autoencoder (factor, channels: configs/common.py, shared with the MMDiT's in/out channels):
    # 32 px -> 8 x 8 x 16 latents; 4x4x3 pixel blocks -> their top-16 principal directions (99.3 % variance), not
    # whitened: each channel keeps its pixel energy, so the flow loss weighs errors as the image does (docs/demo.md)
    # + a learned decoder head (models/pixel_refiner.py) fitted as a latent denoiser on the catalogue
    # (training/pixel_refiner.py): on the same generated latents PFITB FID / random real 4.82x -> 3.14x, render error
    # 28.3 -> 19.9, ~21 s (docs/demo.md "A learned decoder head"); width 0 = the linear decoder only
    refiner = dict(width=8, depth=1, steps=10, batch_size=4) if fast else dict(
        width=16, depth=3, steps=1600 if size == "demo_quality" else 800, batch_size=16)
    c.vae = dict(factor=common.DEMO_VAE_FACTOR, basis="pca_unwhitened", latent_channels=common.DEMO_LATENT_CHANNELS,
                 refiner=dict(refiner, sigma_max=1.0, lr=3e-3))
    c.tokenizer = dict(vocab_size=200 if fast else 400)  # sentencepiece soft limit; max_length: the stage configs'
    # the frozen text encoder: "pretrained" = the stage configs' small_demo T5 v1.1 trained with span corruption on
    # the demo texts (encoder-decoder, the encoder kept, saved as a converted T5 to OUT/t5; docs/demo.md), "random"
    # = the seeded random init. Full sizes keep "random" (`demo --t5 pretrained`: captions 98 % parse / 53 % in
    # vocabulary, but the image preference fell, docs/demo.md); the fast test run exercises the pretrained path
    c.t5 = dict(encoder="pretrained" if fast else "random", steps=30 if fast else 300, batch_size=16 if fast else 64, lr=3e-3,
                mlm_weight=1.0, seed=0)
    c.generate = dict(
        max_rows=4 if fast else 0,            # PFITB rows, 0 = the whole test split (160 blanks)
        # GOR outfits: the default's first 80 of the 160 test outfits (320 items; all 160 cost ~33 s more), --quality all
        gor_max_rows=4 if fast else 0 if size == "demo_quality" else 80,
        num_images=1,                         # samples per blank (generate's task defaults, 2 / 5, cost 2x / 5x)
        image_steps=2 if fast else 12,        # Euler steps per image
        caption_steps=2 if fast else 8,       # masked-diffusion caption steps
        guidance="four_way",
        scales="1,1,4",                       # text, context, preference: v = v_M + 4 (v_P - v_M) (12: FID 5.11x)
        match_train_input=True,               # sample with the input stage 2 trained on (spec 7.2 item 7): +19 pt
        caption_cond="train",                 # no T5(template) 4th segment (spec 7.2 item 10)
        # the caption reads the blank's own generated image, argmax tokens (not the original; images unchanged):
        # parse 74 -> 100 %, in vocabulary 13 -> 29 %, colour = image 4 -> 9 % (docs/demo_captions.md)
        caption_image="generated",
        caption_temperature=0.0,
        # the most probable positions first (MaskGIT-style; not the original's random order): same images, captions
        # in vocabulary 50.2 -> 51.9 %, colour = image 56.9 -> 61.9 %, colour = preference 2.12x -> 2.55x (docs/demo.md)
        caption_order="confidence",
        # guidance toward the generated image on the Color value only (log p_img + 1 (log p_img - log p_null) at
        # its positions; not the original; images unchanged): caption colour = image PFITB 63.7 -> 71.9 %, GOR
        # 57.5 -> 76.2 %, in vocabulary 51.9 -> 50.6 % / 51.2 -> 50.5 %; on every key: 63.7 % (docs/demo_captions.md)
        caption_image_scale=1.0,
        caption_image_keys="Color",
        rows_per_batch=4 if fast else 16)
    # every network real-weight (installed by scripts/install.sh) on PFITB (160 images); GOR has 4x the images: FID
    # there would cost minutes of the budget; LPIPS on 2x2 collages at the images' own scale (64 px, not 1024)
    # caption_oracle: caption values in their key's vocabulary, caption colour = image / = preference (no network)
    c.evaluate = dict(pfitb_metrics="oracle,caption_oracle,fid,fid_ratio,oracle_fidelity,lpips",
                      gor_metrics="oracle,caption_oracle,oracle_fidelity,lpips")
    return c
