"""DualMMDiT vs the PyTorch reference (diffusers 0.42 `SD3JointModelFlexible` rebuild): outputs, converter, CLI.

Weights are random torch inits with every tensor perturbed (so zero-inits such as GOR's projector cannot
hide a mapping bug), converted, and compared. Tolerance: max |jax - torch| <= 1e-4 * std(torch output).
"""
import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax.numpy as jnp  # noqa: E402

from dualfashion_jax.conversion import common, mmdit as conv  # noqa: E402
from dualfashion_jax.core import converted, params as core_params  # noqa: E402
from dualfashion_jax.core.params import ConversionError  # noqa: E402
from dualfashion_jax.modeling import api  # noqa: E402
from dualfashion_jax.models import mmdit_config  # noqa: E402

pytestmark = pytest.mark.torch
REL_TOL = 1e-4  # max abs error relative to the reference output's std

CONFIGS = {
    # Non-square 8x12 latent, odd text length 7, stage-2 MatchingMLP.
    "tiny_nonsquare_mlp": (mmdit_config.get("tiny", latent_size=(8, 12)), (8, 12), 7),
    # Different widths/patch/channels, text length 13, GOR projector variant.
    "patch1_gor": (mmdit_config.get("tiny", num_layers=3, num_heads=4, head_dim=8, patch_size=1, in_channels=4,
                                    out_channels=4, sample_size=4, pos_embed_max_size=10, joint_attention_dim=24,
                                    vocab_size=50, latent_size=6, stage2_variant="gor_projector"), (6, 6), 13),
}


def _reference(cfg, seed=0):
    from dualfashion_jax.reference import torch_mmdit

    model = torch_mmdit.build_reference(cfg, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():  # perturb everything, zero-inits included
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def _inputs(cfg, hw, text_len, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, cfg.in_channels, *hw, generator=g)
    txt = torch.randn(2, text_len, cfg.joint_attention_dim, generator=g)
    t = torch.tensor([3.0, 731.0])
    return x, txt, t


def _close(jax_out, ref, what):
    ref = ref.detach().numpy()
    err = float(np.max(np.abs(np.asarray(jax_out) - ref)))
    assert np.asarray(jax_out).shape == ref.shape, what
    assert err <= REL_TOL * float(ref.std()), f"{what}: max abs err {err:.3g} > {REL_TOL} * std {ref.std():.3g}"


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(request):
    cfg, hw, text_len = CONFIGS[request.param]
    ref = _reference(cfg)
    weights = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    notes = []
    cfg2 = conv.config_from_diffusers(dict(ref.config), weights, source=request.param, notes=notes)
    assert cfg2 == cfg  # the config is recovered from config.json + tensor shapes
    model = api.DualFashionTransformer(conv.model_from_flat(cfg2, conv.convert_weights(weights, cfg2, source="t")))
    return ref, model, _inputs(cfg, hw, text_len)


def test_image_and_text(case):
    ref, model, (x, txt, t) = case
    with torch.no_grad():
        img, logits = ref(x, txt, t)
    j_img, j_logits = model(x, txt, t)
    _close(j_img, img, "velocity")
    _close(j_logits, logits, "text logits")
    assert j_logits.dtype == jnp.float32


def test_text_only_null_tokens(case):
    ref, model, (_, txt, t) = case
    with torch.no_grad():
        null_out, logits = ref(None, txt, t)
    j_null, j_logits = model(None, txt, t)
    assert j_null.shape == (2, 8, model.config.hidden_size)
    _close(j_null, null_out, "trunk null tokens")
    _close(j_logits, logits, "text-only logits")


def test_stage2_offset(case):
    ref, model, (x, _, _) = case
    with torch.no_grad():
        off = ref.stage2_offset(x)  # eval mode: dropout off
    _close(model.stage2_offset(x), off, f"stage-2 offset ({model.config.stage2_variant})")


def test_pos_embed_recomputed_like_diffusers():
    """A freshly built model's sincos grid equals diffusers' buffer (so training from scratch matches too)."""
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    from dualfashion_jax.models import embeddings

    for d, grid, base in ((32, 16, 4), (32, 10, 4), (1536, 48, 16)):  # SD3: D 1536, grid = 3 x base
        ours = embeddings.sincos_2d_pos_embed(d, grid, base_size=base)
        theirs = get_2d_sincos_pos_embed(d, grid, base_size=base, interpolation_scale=1.0).float().numpy()
        np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------------------
# Round trip through save_pretrained -> `dualfashion-jax convert transformer` -> from_pretrained.
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    cfg, hw, text_len = CONFIGS["tiny_nonsquare_mlp"]
    ref = _reference(cfg, seed=3)
    src = tmp_path_factory.mktemp("torch_ckpt")
    ref.save_pretrained(src)
    return ref, src, _inputs(cfg, hw, text_len, seed=4)


def test_cli_round_trip(saved, tmp_path):
    from dualfashion_jax import cli

    ref, src, (x, txt, t) = saved
    out = tmp_path / "converted"
    assert cli.main(["convert", "transformer", str(src), str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["kind"] == "mmdit"
    model = api.DualFashionTransformer.from_pretrained(out)
    with torch.no_grad():
        img, logits = ref(x, txt, t)
        off = ref.stage2_offset(x)
    j_img, j_logits = model(x, txt, t)
    _close(j_img, img, "velocity after CLI round trip")
    _close(j_logits, logits, "logits after CLI round trip")
    _close(model.stage2_offset(x), off, "stage-2 offset after CLI round trip")
    # The diffusers folder itself also loads (converted on the fly), with the same result.
    direct = api.DualFashionTransformer.from_pretrained(src)
    np.testing.assert_array_equal(np.asarray(direct(x, txt, t)[1]), np.asarray(j_logits))
    # Converting into a non-empty output folder is a clean CLI error, not a traceback.
    assert cli.main(["convert", "transformer", str(src), str(out)]) == 1


def _write_broken(tmp_path, src, edit):
    from safetensors.numpy import save_file

    weights = common.read_weights(src / "diffusion_pytorch_model.safetensors")
    weights = {k: np.ascontiguousarray(v) for k, v in weights.items()}
    edit(weights)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((src / "config.json").read_text())
    save_file(weights, str(bad / "diffusion_pytorch_model.safetensors"))
    return bad


def test_missing_key_is_named(saved, tmp_path):
    _, src, _ = saved
    bad = _write_broken(tmp_path, src, lambda w: w.pop("transformer_blocks.1.attn.add_k_proj.bias"))
    with pytest.raises(ConversionError, match=r"missing \(1\):\s+transformer_blocks\.1\.attn\.add_k_proj\.bias"):
        conv.convert(bad, tmp_path / "out")


def test_wrong_shape_is_named(saved, tmp_path):
    _, src, _ = saved

    def edit(w):
        w["context_embedder.weight"] = np.zeros((32, 31), np.float32)
        w["stage2_mystery"] = np.zeros((2,), np.float32)

    bad = _write_broken(tmp_path, src, edit)
    with pytest.raises(ConversionError) as e:
        conv.convert(bad, tmp_path / "out")
    msg = str(e.value)
    assert "context_embedder.weight: checkpoint (32, 31) vs model (32, 32)" in msg
    assert "unexpected (1):\n    stage2_mystery" in msg


def test_dropped_and_absent_stage2_are_reported(saved, tmp_path, capsys):
    _, src, _ = saved

    def edit(w):
        for k in [k for k in w if k.startswith("stage2_")]:
            del w[k]
        w["time_text_embed.text_embedder.linear_1.weight"] = np.zeros((4, 4), np.float32)  # stock SD3 key

    bad = _write_broken(tmp_path, src, edit)
    conv.convert(bad, tmp_path / "out")
    err = capsys.readouterr().err
    assert "time_text_embed.text_embedder.linear_1.weight" in err
    assert "stage2=False" in err
    meta, _ = converted.load_converted(tmp_path / "out", kind="mmdit")
    assert meta["config"]["stage2"] is False


def test_gor_variant_from_mlp_checkpoint_zero_fills(saved, tmp_path):
    """--stage2-variant gor_projector on a training-script checkpoint behaves like the original GOR: offset = r_t."""
    ref, src, (x, _, _) = saved
    model = api.DualFashionTransformer.from_pretrained(src, stage2_variant="gor_projector")
    r_t = ref.stage2_target_role_embedding.detach().numpy()
    np.testing.assert_allclose(np.asarray(model.stage2_offset(x)), np.broadcast_to(r_t, x.shape), atol=1e-7)


# ----------------------------------------------------------------------------------------------------------
# sd3_medium by shape only.
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage2", [False, True])
def test_sd3_medium_param_count_matches_torch(stage2):
    from dualfashion_jax.models import mmdit
    from dualfashion_jax.reference import torch_mmdit
    from flax import nnx

    cfg = dataclasses.replace(mmdit_config.get("sd3_medium"), stage2=stage2)
    ours = sum(int(np.prod(s.shape))
               for s in core_params.abstract_params(lambda: mmdit.DualMMDiT(cfg, rngs=nnx.Rngs(0))).values())
    with torch.device("meta"):
        ref = torch_mmdit.SD3JointModelFlexible(**torch_mmdit.reference_kwargs(cfg))
    theirs = sum(p.numel() for p in ref.parameters())
    print(f"sd3_medium params (stage2={stage2}): flax {ours:,} torch {theirs:,}")
    assert ours == theirs
    # Every torch tensor (incl. the pos-embed buffer) has a converter mapping with the right shape.
    expected = conv.expected_shapes(cfg)
    kmap = conv.key_map(cfg, expected)
    assert set(kmap) == set(ref.state_dict())


def test_bf16_sharded_export_converts(tmp_path):
    """The released exports are bf16 (and big ones sharded): both read back to the exact bf16 values in fp32."""
    cfg = CONFIGS["tiny_nonsquare_mlp"][0]
    ref = _reference(cfg, seed=5).to(torch.bfloat16)
    ref.save_pretrained(tmp_path / "src", max_shard_size="40KB")
    assert len(list((tmp_path / "src").glob("*.safetensors"))) > 1
    cfg2, flat = conv.load_source(tmp_path / "src")
    assert cfg2 == cfg
    w = ref.transformer_blocks[1].attn.to_out[0].weight.detach().float().numpy()
    np.testing.assert_array_equal(flat["blocks/attn/to_out/kernel"][1], w.T)
    assert flat["blocks/attn/to_out/kernel"].dtype == np.float32
    r_c = ref.stage2_context_role_embedding.detach().float().numpy()
    np.testing.assert_array_equal(flat["stage2/context_role"], r_c.transpose(0, 2, 3, 1))


def test_original_style_config_without_stage2_fields(saved, tmp_path):
    """The original config.json has no stage2_* fields: the MLP size comes from its weights (square only)."""
    _, src, _ = saved
    dconf = {k: v for k, v in json.loads((src / "config.json").read_text()).items()
             if not k.startswith("stage2_") and k != "num_null_tokens"}
    weights = common.read_weights(src)
    with pytest.raises(ConversionError, match=r"input size 1536 is not 16\*H\*W with H == W"):
        conv.config_from_diffusers(dconf, weights, source="config.json", notes=[])
    square = dict(weights, **{"stage2_matching_mlp.hidden_layer.weight": np.zeros((32, 1024), np.float32)})
    cfg = conv.config_from_diffusers(dconf, square, source="config.json", notes=[])
    assert (cfg.latent_size, cfg.matching_hidden, cfg.num_null_tokens, cfg.stage2_variant) == (8, 32, 8, "mlp")
