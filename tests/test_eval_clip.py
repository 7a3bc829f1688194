"""CLIP ViT (image + text towers), converter, tokenizer and preprocessing vs open_clip's own torch classes."""
import gzip

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dualfashion_jax.core import params as core_params
from dualfashion_jax.evaluators.nets import clip_weights as oc_conv
from dualfashion_jax.evaluators.nets import clip_text, clip_tokenizer, clip_vit

TEXTS = ["A photo of a pair of pants, on white background", "A photo of a bag, on white background",
         '{"Color": "navy blue", "Material": "denim", "Design features": "ripped knees", '
         '"Clothing Fashion Style": "street"}', "Crème brûlée &amp; CAFÉ au lait!! 12.5% off",
         "word " * 120]


def _small_bpe(tmp_path):
    """A tiny merges file in CLIP's format (header line + merge pairs), so the tokenizer runs without open_clip."""
    merges = ["#version: 0.2", "p h", "ph o", "t o</w>", "pho to</w>"]
    path = tmp_path / clip_tokenizer.BPE_FILENAME
    with gzip.open(path, "wt") as f:
        f.write("\n".join(merges) + "\n")
    return path


def test_tokenizer_without_open_clip(tmp_path):
    tok = clip_tokenizer.CLIPTokenizer(_small_bpe(tmp_path))
    assert tok.vocab_size == 512 + 4 + 2 and tok.eot_id == tok.vocab_size - 1
    ids = tok(["Photo a", "x " * 100])
    assert ids.shape == (2, 77) and ids.dtype == np.int32
    assert ids[0, 0] == tok.sot_id and tok.decoder[int(ids[0, 1])] == "photo</w>"
    assert ids[1, 76] == tok.eot_id and (ids[1] != 0).all()  # truncated, EOT kept last
    assert tok.decode(ids[0]) == "photo a"
    with pytest.raises(FileNotFoundError, match="merges file"):
        clip_tokenizer.CLIPTokenizer(tmp_path / "nope.txt.gz")


# ------------------------------------------------------------------------------------------------ torch side
@pytest.fixture(scope="module")
def oc():
    pytest.importorskip("torch")
    from dualfashion_jax.reference import open_clip_ref
    try:
        return open_clip_ref.load()
    except open_clip_ref.OpenClipUnavailable as e:
        pytest.skip(str(e))


@pytest.mark.torch
def test_tokenizer_matches_open_clip(oc):
    ref = oc["tokenizer"].SimpleTokenizer(str(oc["bpe"]))
    tok = clip_tokenizer.CLIPTokenizer(oc["bpe"])
    np.testing.assert_array_equal(tok(TEXTS), ref(TEXTS).numpy())  # exact: same ids, truncation and padding


def _randomise(module, seed):
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():  # also the LN params and biases, which init to 1/0
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


TINY_V = dict(image_size=32, patch_size=8, width=64, layers=2, heads=4, mlp_ratio=4.0, output_dim=24)
TINY_T = dict(context_length=77, vocab_size=49408, width=48, heads=4, layers=2, output_dim=24)


@pytest.fixture(scope="module")
def pair(oc):
    """open_clip towers with random weights, and our CLIP converted from their state dict."""
    import torch

    vis = oc["transformer"].VisionTransformer(**TINY_V).eval()
    txt = oc["transformer"].TextTransformer(**TINY_T).eval()
    _randomise(vis, 0)
    _randomise(txt, 1)
    sd = {f"visual.{k}": v.numpy() for k, v in vis.state_dict().items()}
    sd.update({k: v.numpy() for k, v in txt.state_dict().items()})
    sd["logit_scale"] = np.asarray(np.log(100.0), np.float32)
    config = oc_conv.infer_config(sd, vision_heads=4, text_heads=4)
    flat = oc_conv.convert_state_dict(sd)
    core_params.validate(flat, core_params.abstract_params(oc_conv._factory(config)), source="test")
    model = clip_text.CLIP(config, rngs=nnx.Rngs(0))
    core_params.load_flat_into(model, flat, source="test")
    return vis, txt, model, sd, torch


@pytest.mark.torch
def test_image_tower_parity(pair):
    vis, _, model, _, torch = pair
    x = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        ref = vis(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    out = np.asarray(nnx.jit(lambda m, p: m.encode_image(p))(model, jnp.asarray(x)))
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)  # fp32, random weights: tolerance 1e-4


@pytest.mark.torch
def test_text_tower_parity(pair, oc):
    _, txt, model, _, torch = pair
    ids = clip_tokenizer.CLIPTokenizer(oc["bpe"])(TEXTS)
    with torch.no_grad():
        ref = txt(torch.from_numpy(ids.astype(np.int64))).numpy()
    out = np.asarray(nnx.jit(lambda m, i: m.encode_text(i))(model, jnp.asarray(ids)))
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)  # fp32, random weights: tolerance 1e-4


@pytest.mark.torch
def test_convert_save_load_roundtrip_and_errors(pair, tmp_path):
    _, _, model, sd, _ = pair
    from safetensors.numpy import save_file

    raw = tmp_path / "open_clip_model.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, raw)
    loaded, config, _ = oc_conv.load_clip(raw, config=model.config)
    out_dir = oc_conv.convert(raw, tmp_path / "conv", vision_heads=4, text_heads=4)
    assert (out_dir / clip_tokenizer.BPE_FILENAME).is_file()  # self-contained: tokenizer travels with the weights
    again, again_cfg, source = oc_conv.load_clip(out_dir)
    assert again_cfg == config
    assert source == str(raw)
    x = jnp.ones((1, 32, 32, 3))
    np.testing.assert_array_equal(np.asarray(again.encode_image(x)), np.asarray(model.encode_image(x)))
    bad = dict(sd)
    bad["visual.transformer.resblocks.0.attn.bogus"] = np.zeros(3, np.float32)
    with pytest.raises(core_params.ConversionError, match="bogus"):
        oc_conv.convert_state_dict(bad)
    del bad["visual.transformer.resblocks.0.attn.bogus"], bad["visual.ln_post.weight"]
    flat = oc_conv.convert_state_dict(bad)
    with pytest.raises(core_params.ConversionError, match="visual/ln_post/norm/scale"):
        core_params.validate(flat, core_params.abstract_params(oc_conv._factory(model.config)), source="x")


@pytest.mark.torch
def test_vit_h_14_param_count_matches_open_clip(oc):
    import torch

    with torch.device("meta"):
        vis = oc["transformer"].VisionTransformer(224, 14, 1280, 32, 16, 4.0, output_dim=1024)
        txt = oc["transformer"].TextTransformer(77, 49408, 1024, 16, 24, output_dim=1024)
    n_torch = sum(p.numel() for p in vis.parameters()) + sum(p.numel() for p in txt.parameters()) + 1  # + logit_scale
    shapes = core_params.abstract_params(oc_conv._factory(clip_text.get_config("vit_h_14")))
    n_jax = sum(int(np.prod(s.shape)) for s in shapes.values())
    assert n_jax == n_torch and 985_000_000 < n_jax < 988_000_000


def test_preprocess():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(2, 224, 224, 3), dtype=np.uint8)
    out = np.asarray(clip_vit.preprocess(jnp.asarray(img)))  # no resize at 224: exact normalisation
    ref = (img / 255.0 - np.array(clip_vit.CLIP_MEAN)) / np.array(clip_vit.CLIP_STD)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    # 512 -> 224 vs PIL's bicubic (open_clip's transform): kernels differ slightly; smooth image, mean |diff| < 0.02.
    from PIL import Image

    yy, xx = np.mgrid[0:512, 0:512] / 512.0
    smooth = (np.stack([np.sin(3 * xx), np.cos(2 * yy), xx * yy], -1) * 0.5 + 0.5) * 255
    smooth = smooth.astype(np.uint8)
    pil = np.asarray(Image.fromarray(smooth).resize((224, 224), Image.BICUBIC)) / 255.0
    pil = (pil - np.array(clip_vit.CLIP_MEAN)) / np.array(clip_vit.CLIP_STD)
    ours = np.asarray(clip_vit.preprocess(jnp.asarray(smooth[None])))[0]
    assert ours.shape == (224, 224, 3) and np.abs(ours - pil).mean() < 0.02
    wide = np.asarray(clip_vit.preprocess(jnp.zeros((1, 100, 300, 3), jnp.uint8)))
    assert wide.shape == (1, 224, 224, 3)
    with pytest.raises(ValueError, match="NHWC"):
        clip_vit.preprocess(jnp.zeros((1, 3, 224, 224)))


def test_bad_inputs_are_named():
    # Shape checks run before any parameter is touched, so an abstract (eval_shape) model is enough.
    model = nnx.eval_shape(lambda: clip_text.CLIP(clip_text.get_config("tiny"), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"expected pixels \[B, 32, 32, 3\]"):
        model.encode_image(jnp.zeros((1, 3, 32, 32)))
    with pytest.raises(ValueError, match="token ids"):
        model.encode_text(jnp.zeros((1, 78), jnp.int32))
    with pytest.raises(ValueError, match="unknown CLIP preset"):
        clip_text.get_config("vit_z")


def test_bf16_compute_tracks_fp32():
    """Same fp32 params, bf16 compute: embeddings stay close (cosine > 0.99); params remain fp32."""
    cfg = clip_text.get_config("tiny")
    m32 = clip_text.CLIP(cfg, rngs=nnx.Rngs(0))
    m16 = clip_text.CLIP(cfg.with_dtype(jnp.bfloat16), rngs=nnx.Rngs(0))
    assert all(v.dtype == np.float32 for v in core_params.flat_params(m16).values())
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
    a, b = np.asarray(m32.encode_image(x)), np.asarray(m16.encode_image(x))
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    assert b.dtype == np.float32 and (cos > 0.99).all()
