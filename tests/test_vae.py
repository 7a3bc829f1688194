"""Flax AutoencoderKL vs diffusers `AutoencoderKL` (SD3-style: 16 latent ch, no quant convs): parity, conversion,
latent scaling helpers, errors, full-size parameter count."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dualfashion_jax.conversion import common
from dualfashion_jax.core import params as core_params
from dualfashion_jax.core.params import ConversionError
from dualfashion_jax.conversion import vae as conv
from dualfashion_jax.models import vae
from dualfashion_jax.modeling import latents

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.torch

# fp32 parity tolerance: max |jax - torch| <= TOL * std(torch output)
TOL = 1e-4
SHIFT, SCALE = 0.0609, 1.5305


def _sd3_style(**kw):
    """A small diffusers config with SD3's structure: 3 levels (one width change -> conv_shortcut), 16 latents."""
    base = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 3,
                up_block_types=["UpDecoderBlock2D"] * 3, block_out_channels=[32, 64, 64], layers_per_block=2,
                latent_channels=16, norm_num_groups=8, sample_size=32, scaling_factor=SCALE, shift_factor=SHIFT,
                use_quant_conv=False, use_post_quant_conv=False)
    base.update(kw)
    return base


def _torch_vae(cfg, seed):
    torch.manual_seed(seed)
    model = diffusers.AutoencoderKL(**cfg).eval()
    with torch.no_grad():  # GroupNorm affines start at 1/0: perturb so a swapped scale/bias cannot pass
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def torch_vae(tmp_path_factory):
    model = _torch_vae(_sd3_style(), 0)
    folder = tmp_path_factory.mktemp("vae_hf")
    model.save_pretrained(folder)
    return model, folder


@pytest.fixture(scope="module")
def flax_vae(torch_vae):
    return conv.load(torch_vae[1])


def _check(got, want, what):
    got = np.asarray(got)
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs {want.shape}"
    err = float(np.max(np.abs(got - want)))
    assert err <= TOL * float(want.std()), f"{what}: max abs err {err:.3g} > {TOL} x std {want.std():.3g}"


def _nchw(x):
    return np.ascontiguousarray(np.transpose(np.asarray(x), (0, 3, 1, 2)))


def _nhwc(x):
    return np.transpose(x, (0, 2, 3, 1))


def _compare(model, ae, h, w, seed):
    """Encode (posterior mean, logvar) and decode parity on an NHWC batch of size h x w."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(2, h, w, 3)).astype(np.float32)
    z = rng.normal(size=(2, h // 4, w // 4, ae.cfg.latent_channels)).astype(np.float32)
    with torch.no_grad():
        post = model.encode(torch.from_numpy(_nchw(x))).latent_dist
        dec = model.decode(torch.from_numpy(_nchw(z))).sample.numpy()
    got = jax.jit(lambda m, a: m.encode(a))(ae, jnp.asarray(x))
    _check(got.mean, _nhwc(post.mean.numpy()), f"posterior mean {h}x{w}")
    _check(got.logvar, _nhwc(post.logvar.numpy()), f"posterior logvar {h}x{w}")
    _check(jax.jit(lambda m, a: m.decode(a))(ae, jnp.asarray(z)), _nhwc(dec), f"decode {h}x{w}")


@pytest.mark.parametrize("hw", [(32, 32), (24, 40)])
def test_parity_with_diffusers(torch_vae, flax_vae, hw):
    _compare(torch_vae[0], flax_vae, *hw, seed=hw[1])


def test_quant_conv_variant_parity(tmp_path):
    """SD1/2-style VAE (quant convs on, 4 latents, 2 levels) through the same converter."""
    cfg = _sd3_style(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2,
                     up_block_types=["UpDecoderBlock2D"] * 2, layers_per_block=1, latent_channels=4,
                     shift_factor=None, scaling_factor=0.18215, use_quant_conv=True, use_post_quant_conv=True)
    model = _torch_vae(cfg, 1)
    model.save_pretrained(tmp_path)
    ae = conv.load(tmp_path)
    assert ae.cfg.use_quant_conv and ae.cfg.shift_factor == 0.0
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, size=(1, 16, 24, 3)).astype(np.float32)
    z = rng.normal(size=(1, 8, 12, 4)).astype(np.float32)
    with torch.no_grad():
        mean = model.encode(torch.from_numpy(_nchw(x))).latent_dist.mean.numpy()
        dec = model.decode(torch.from_numpy(_nchw(z))).sample.numpy()
    got_mean, got_dec = nnx.jit(lambda m, a, b: (m.encode(a).mean, m.decode(b)))(ae, jnp.asarray(x), jnp.asarray(z))
    _check(got_mean, _nhwc(mean), "quant-conv VAE mean")
    _check(got_dec, _nhwc(dec), "quant-conv VAE decode")


def test_convert_round_trip(torch_vae, tmp_path):
    out = conv.convert(torch_vae[1], tmp_path / "out")
    meta = json.loads((out / "config.json").read_text())
    assert meta["kind"] == "vae" and meta["config"]["latent_channels"] == 16
    ae = conv.load(out)
    assert ae.cfg.shift_factor == SHIFT and ae.cfg.scaling_factor == SCALE
    _compare(torch_vae[0], ae, 16, 24, seed=5)


def _write(folder, sd, cfg):
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()},
              str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", **cfg}))
    return folder


def test_conversion_errors_name_keys(torch_vae, tmp_path):
    sd = common.read_weights(torch_vae[1] / "diffusion_pytorch_model.safetensors")
    bad = dict(sd)
    del bad["decoder.up_blocks.1.resnets.2.conv2.bias"]
    with pytest.raises(ConversionError, match=r"missing \(1\):\s+decoder\.up_blocks\.1\.resnets\.2\.conv2"):
        conv.convert(_write(tmp_path / "a", bad, _sd3_style()), tmp_path / "oa")
    bad = dict(sd)
    bad["encoder.mid_block.attentions.0.to_q.weight"] = np.zeros((64, 32), np.float32)
    msg = r"encoder\.mid_block\.attentions\.0\.to_q\.weight: checkpoint \(64, 32\) vs model \(64, 64\)"
    with pytest.raises(ConversionError, match=msg):
        conv.load(_write(tmp_path / "b", bad, _sd3_style()))
    bad = {**sd, "quant_conv.weight": np.zeros((32, 32, 1, 1), np.float32), "quant_conv.bias": np.zeros(32, np.float32)}
    with pytest.raises(ConversionError, match=r"quant_conv\.bias.*use_quant_conv=False"):
        conv.convert(_write(tmp_path / "c", bad, _sd3_style()), tmp_path / "oc")
    with pytest.raises(ValueError, match="down_block_types"):
        conv.convert(_write(tmp_path / "d", sd, _sd3_style(down_block_types=["AttnDownEncoderBlock2D"] * 3)),
                     tmp_path / "od")


def test_legacy_attention_names_are_accepted(torch_vae):
    sd = common.read_weights(torch_vae[1] / "diffusion_pytorch_model.safetensors")
    renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    legacy = {}
    for k, v in sd.items():
        for new, old in renames.items():
            if f"attentions.0.{new}." in k:
                k = k.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
                v = v[:, :, None, None] if v.ndim == 2 else v  # old checkpoints stored 1x1 convs
        legacy[k] = v
    cfg = conv.config_from_diffusers(_sd3_style(), source="test config")
    a, b = conv.torch_to_flax(sd, cfg, source="new"), conv.torch_to_flax(legacy, cfg, source="legacy")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_scaling_helpers_and_image_api(flax_vae):
    cfg = flax_vae.cfg
    z = jax.random.normal(jax.random.key(0), (1, 4, 6, 16))
    np.testing.assert_allclose(vae.to_model_latents(z, cfg), (z - SHIFT) * SCALE, rtol=1e-6)
    np.testing.assert_allclose(vae.from_model_latents(vae.to_model_latents(z, cfg), cfg), z, atol=1e-6)

    imgs = np.random.default_rng(0).integers(0, 256, size=(2, 16, 24, 3)).astype(np.uint8)
    key = jax.random.key(7)

    @nnx.jit
    def run(ae, u8, f01, key):  # one compile for the whole image API
        zm = latents.encode_images(ae, u8, sample=False)
        post = ae.encode(u8.astype(jnp.float32) / 127.5 - 1)
        return dict(zm=zm, zm_f=latents.encode_images(ae, f01, sample=False), zs=latents.encode_images(ae, u8, key),
                    mean=post.mean, std=post.std, out=vae.decode_latents(ae, zm), raw=ae.decode(post.mean))

    r = run(flax_vae, jnp.asarray(imgs), jnp.asarray(imgs, jnp.float32) / 255, key)
    np.testing.assert_allclose(r["zm"], (r["mean"] - SHIFT) * SCALE, atol=1e-5)
    np.testing.assert_allclose(r["zm_f"], r["zm"], atol=1e-5)
    eps = (vae.from_model_latents(r["zs"], cfg) - r["mean"]) / r["std"]
    np.testing.assert_allclose(eps, jax.random.normal(key, r["mean"].shape), atol=1e-3)
    out = r["out"]
    assert out.shape == (2, 16, 24, 3) and float(out.min()) >= 0 and float(out.max()) <= 1
    np.testing.assert_allclose(out, np.clip((np.asarray(r["raw"]) + 1) / 2, 0, 1), atol=1e-5)
    assert vae.to_uint8(out).dtype == np.uint8


def test_bad_inputs_raise_clear_errors(flax_vae):
    with pytest.raises(ValueError, match=r"expected NHWC \[B, H, W, 3\].*looks NCHW"):
        flax_vae.encode(jnp.zeros((1, 3, 16, 16)))
    with pytest.raises(ValueError, match=r"multiples of 4"):
        flax_vae.encode(jnp.zeros((1, 18, 16, 3)))
    with pytest.raises(ValueError, match=r"latents: expected NHWC \[B, H, W, 16\]"):
        flax_vae.decode(jnp.zeros((1, 4, 4, 4)))
    with pytest.raises(ValueError, match=r"float images must lie in \[0, 1\]"):
        latents.encode_images(flax_vae, jnp.full((1, 16, 16, 3), 255.0), sample=False)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        latents.encode_images(flax_vae, jnp.zeros((1, 16, 16, 3), jnp.uint8))
    with pytest.raises(ValueError, match="norm_num_groups=32 does not divide"):
        vae.get_config("tiny", norm_num_groups=32, block_out_channels=(48, 64))


def test_bf16_compute_tiny():
    ae32 = vae.AutoencoderKL(vae.get_config("tiny"), rngs=nnx.Rngs(0))
    params = core_params.flat_params(ae32)
    ae16 = core_params.module_from_flat(lambda: vae.AutoencoderKL(dataclasses.replace(ae32.cfg, dtype=jnp.bfloat16),
                                                                  rngs=nnx.Rngs(1)), params, source="test")
    x = jax.random.uniform(jax.random.key(1), (1, 16, 16, 3), minval=-1, maxval=1)
    run = nnx.jit(lambda m, a: (m.encode(a).mean, m.decode(m.encode(a).mean)))
    (ref, _), (out, dec) = run(ae32, x), run(ae16, x)
    assert out.dtype == jnp.float32  # posterior statistics are fp32 whatever the compute dtype
    assert dec.dtype == jnp.bfloat16
    rel = float(jnp.abs(out - ref).mean() / jnp.abs(ref).mean())
    assert rel < 3e-2, f"bf16 compute drifts {rel:.3g} (mean rel) from fp32"


def test_full_size_sd3_parameter_count():
    ours = sum(int(np.prod(v.shape)) for v in core_params.abstract_params(
        lambda: vae.AutoencoderKL(vae.get_config("sd3"), rngs=nnx.Rngs(0))).values())
    sd3 = _sd3_style(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                     up_block_types=["UpDecoderBlock2D"] * 4, norm_num_groups=32, sample_size=1024)
    with torch.device("meta"):
        ref = diffusers.AutoencoderKL(**sd3)
    theirs = sum(p.numel() for p in ref.parameters())
    print(f"SD3 VAE parameters: jax {ours:,} torch {theirs:,}")
    assert ours == theirs
    # full-size 512 px round trip by shape only: [1, 512, 512, 3] -> [1, 64, 64, 16] -> [1, 512, 512, 3]
    def round_trip():
        ae = vae.AutoencoderKL(vae.get_config("sd3"), rngs=nnx.Rngs(0))
        z = ae.encode(jnp.zeros((1, 512, 512, 3))).mode()
        return z, ae.decode(z)
    z, x = nnx.eval_shape(round_trip)
    assert z.shape == (1, 64, 64, 16) and x.shape == (1, 512, 512, 3)
