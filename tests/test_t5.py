"""Flax T5 v1.1 encoder vs transformers `T5EncoderModel`: parity, conversion round trip, errors, full-size count."""
import copy
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
from dualfashion_jax.conversion import t5 as conv
from dualfashion_jax.models import t5

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.torch

# fp32 parity tolerance: max |jax - torch| <= TOL * std(torch output) (outputs are RMS-normalised, std ~ 1)
TOL = 1e-4
B, L = 3, 40  # L > relative_attention_max_distance (16) so the log-spaced and clipped buckets are exercised


def _hf_config(**kw):
    base = dict(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                relative_attention_num_buckets=8, relative_attention_max_distance=16,
                feed_forward_proj="gated-gelu", dropout_rate=0.0, layer_norm_epsilon=1e-6)
    base.update(kw)
    return transformers.T5Config(**base)


@pytest.fixture(scope="module")
def torch_t5(tmp_path_factory):
    """A random tiny T5EncoderModel (norm scales perturbed so every tensor matters), saved with save_pretrained."""
    torch.manual_seed(0)
    model = transformers.T5EncoderModel(_hf_config()).eval()
    assert model.config.is_gated_act and model.config.dense_act_fn == "gelu_new"
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("t5_hf")
    model.save_pretrained(folder)
    return model, folder


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    ids = rng.integers(2, 128, size=(B, L)).astype(np.int64)
    mask = np.ones((B, L), np.int64)
    mask[1, 25:] = 0  # padded rows (ids there are still real tokens: padding positions are compared too)
    mask[2, 7:] = 0
    return ids, mask


def _torch_out(model, ids, mask):
    with torch.no_grad():
        kw = {} if mask is None else {"attention_mask": torch.from_numpy(mask)}
        return model(input_ids=torch.from_numpy(ids), **kw).last_hidden_state.numpy()


@pytest.fixture(scope="module")
def flax_t5(torch_t5):
    return conv.load(torch_t5[1])


def _check(got, want, what):
    err = float(np.max(np.abs(np.asarray(got) - want)))
    assert err <= TOL * float(want.std()), f"{what}: max abs err {err:.3g} > {TOL} x std {want.std():.3g}"


@pytest.mark.parametrize("use_mask", [False, True])
def test_parity_with_transformers(torch_t5, flax_t5, inputs, use_mask):
    ids, mask = inputs
    mask = mask if use_mask else None
    want = _torch_out(torch_t5[0], ids, mask)
    got = jax.jit(lambda m, i, a: m(i, a))(flax_t5, jnp.asarray(ids), None if mask is None else jnp.asarray(mask))
    assert got.shape == (B, L, 32) and got.dtype == jnp.float32
    _check(got, want, f"T5 encoder (mask={use_mask})")


def test_bucket_function_matches_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(300)[None, :] - torch.arange(300)[:, None]
    for nb, md in ((32, 128), (8, 16)):
        want = T5Attention._relative_position_bucket(rel, bidirectional=True, num_buckets=nb, max_distance=md)
        got = t5.relative_position_buckets(300, 300, nb, md)
        np.testing.assert_array_equal(np.asarray(got), want.numpy())


def test_unrolled_layers_and_bf16_compute(flax_t5, inputs):
    ids, mask = jnp.asarray(inputs[0]), jnp.asarray(inputs[1])
    ref = flax_t5(ids, mask)
    params = core_params.flat_params(flax_t5)
    unrolled = core_params.module_from_flat(
        lambda: t5.T5Encoder(dataclasses.replace(flax_t5.cfg, scan_layers=False), rngs=nnx.Rngs(1)), params,
        source="test")
    np.testing.assert_allclose(unrolled(ids, mask), ref, atol=1e-5)
    bf16 = core_params.module_from_flat(
        lambda: t5.T5Encoder(dataclasses.replace(flax_t5.cfg, dtype=jnp.bfloat16), rngs=nnx.Rngs(1)), params,
        source="test")
    out = bf16(ids, mask)
    assert out.dtype == jnp.bfloat16
    assert bf16.shared.embedding[...].dtype == jnp.float32  # params stay fp32
    rel = float(jnp.abs(out.astype(jnp.float32) - ref).mean() / jnp.abs(ref).mean())
    assert rel < 3e-2, f"bf16 compute drifts {rel:.3g} (mean rel) from fp32"


def test_convert_round_trip_with_mask_emb(torch_t5, inputs, tmp_path):
    model, folder = torch_t5
    vec = torch.randn(1, 32)
    torch.save({"mask_token_emb": vec}, tmp_path / "mask_emb.pth")
    out = conv.convert(folder, tmp_path / "out", mask_emb=tmp_path / "mask_emb.pth", mask_token_id=99)
    meta = json.loads((out / "config.json").read_text())
    assert meta["kind"] == "t5" and meta["mask_token_id"] == 99
    enc = conv.load(out)
    np.testing.assert_array_equal(np.asarray(enc.shared.embedding[...][99]), vec[0].numpy())
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.shared.weight[99] = vec[0]
    ids, mask = inputs
    ids = ids.copy()
    ids[:, ::5] = 99  # the mask token must reach the output through the overwritten row
    _check(enc(jnp.asarray(ids), jnp.asarray(mask)), _torch_out(model, ids, mask), "converted T5 + mask emb")


def _write_state(tmp_path, sd, hf_cfg):
    from safetensors.numpy import save_file

    tmp_path.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(hf_cfg.to_dict()))
    return tmp_path


def test_missing_and_misshaped_keys_are_named(torch_t5, tmp_path):
    sd = common.read_weights(torch_t5[1])
    bad = dict(sd)
    del bad["encoder.block.1.layer.1.DenseReluDense.wi_1.weight"]
    with pytest.raises(ConversionError, match=r"missing \(1\):\s+encoder\.block\.1\.layer\.1\.Dense"):
        conv.convert(_write_state(tmp_path / "a", bad, _hf_config()), tmp_path / "oa")
    bad = dict(sd)
    bad["encoder.block.0.layer.0.SelfAttention.q.weight"] = np.zeros((32, 31), np.float32)
    with pytest.raises(ConversionError, match=r"encoder\.block\.0\.layer\.0\.SelfAttention\.q\.weight: "
                                                      r"checkpoint \(32, 31\) vs model \(32, 32\)"):
        conv.load(_write_state(tmp_path / "b", bad, _hf_config()))
    with pytest.raises(ValueError, match="feed_forward_proj 'relu'"):
        conv.convert(_write_state(tmp_path / "c", sd, _hf_config(feed_forward_proj="relu")), tmp_path / "oc")


def test_mask_emb_errors(torch_t5, tmp_path):
    torch.save(torch.zeros(33), tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match=r"wrong\.pth.*shape \(33,\), expected \(32,\)"):
        conv.convert(torch_t5[1], tmp_path / "o1", mask_emb=tmp_path / "wrong.pth")
    torch.save({"a": torch.zeros(32), "b": torch.zeros(32)}, tmp_path / "two.pth")
    with pytest.raises(ValueError, match=r"two\.pth: expected exactly one tensor"):
        conv.convert(torch_t5[1], tmp_path / "o2", mask_emb=tmp_path / "two.pth")
    torch.save(torch.zeros(32), tmp_path / "ok.pth")
    with pytest.raises(ValueError, match="mask_token_id 500 outside"):
        conv.convert(torch_t5[1], tmp_path / "o3", mask_emb=tmp_path / "ok.pth", mask_token_id=500)


def test_bad_inputs_raise_clear_errors(flax_t5):
    with pytest.raises(ValueError, match=r"attention_mask shape \(2, 3\) must equal input_ids shape \(2, 4\)"):
        flax_t5(jnp.zeros((2, 4), jnp.int32), jnp.ones((2, 3), jnp.int32))
    with pytest.raises(ValueError, match=r"input_ids must be \[B, L\]"):
        flax_t5(jnp.zeros((4,), jnp.int32))
    with pytest.raises(ValueError, match="unknown"):
        t5.get_config("xl")


def test_full_size_xxl_parameter_count():
    cfg = t5.get_config("t5_v1_1_xxl")
    ours = sum(int(np.prod(v.shape)) for v in core_params.abstract_params(lambda: t5.T5Encoder(cfg, rngs=nnx.Rngs(0)))
               .values())
    hf = _hf_config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                    relative_attention_num_buckets=32, relative_attention_max_distance=128)
    with torch.device("meta"):
        ref = transformers.T5EncoderModel(hf)
    theirs = sum(p.numel() for p in ref.parameters())  # the tied embed_tokens is counted once
    print(f"T5-v1.1-XXL encoder parameters: jax {ours:,} torch {theirs:,}")
    assert ours == theirs
    # full-size forward by shape only: one 256-token segment with its attention mask -> [B, 256, 4096]
    out = nnx.eval_shape(lambda: t5.T5Encoder(cfg, rngs=nnx.Rngs(0))(jnp.zeros((2, 256), jnp.int32),
                                                                      jnp.ones((2, 256), jnp.int32)))
    assert out.shape == (2, 256, 4096) and out.dtype == jnp.float32


def test_sharded_bf16_checkpoint_loads_exactly(torch_t5, tmp_path):
    """A bf16 checkpoint split into shards (model.safetensors.index.json) converts to the same fp32 values."""
    model = copy.deepcopy(torch_t5[0]).to(torch.bfloat16)
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    (tmp_path / "stray.safetensors").write_bytes(b"")  # not in the index: must be ignored
    params = core_params.flat_params(conv.load(tmp_path))
    sd = {k: v.float().numpy() for k, v in model.state_dict().items()}
    np.testing.assert_array_equal(params["shared/embedding"], sd["shared.weight"])
    wo = sd["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
    np.testing.assert_array_equal(params["blocks/ffn/wo/kernel"][1], wo.T)
    np.testing.assert_array_equal(params["blocks/attn_norm/weight"][0], sd["encoder.block.0.layer.0.layer_norm.weight"])


def test_relative_bias_init_std_keeps_repeated_tokens_apart():
    """A random T5 with its own bias init (std d_model^-0.5) gives every masked position of a caption template
    the same output (what the demo's caption stream sees); `relative_bias_init_std=3` keeps them apart."""
    ids = np.array([[15, 12, 99, 13, 10, 99, 99, 13, 7, 99, 99, 99, 13, 3, 99, 14, 1, 1, 1, 1]])  # 99 = MASK
    pos = np.flatnonzero(ids[0] == 99)

    def mean_cos(cfg):
        out = np.asarray(t5.T5Encoder(cfg, rngs=nnx.Rngs(0))(jnp.asarray(ids), None))[0, pos]
        x = out / np.linalg.norm(out, axis=1, keepdims=True)
        return (x @ x.T)[~np.eye(len(pos), dtype=bool)].mean()

    demo = t5.get_config("small_demo", vocab_size=128)
    assert demo.relative_bias_init_std == 0.0 and mean_cos(demo) > 0.99
    strong = dataclasses.replace(demo, relative_bias_init_std=3.0)
    assert mean_cos(strong) < 0.9
    table = np.asarray(t5.T5Encoder(strong, rngs=nnx.Rngs(1)).relative_attention_bias[...])
    assert abs(table.std() - 3.0) < 0.6
    with pytest.raises(ValueError, match="relative_bias_init_std"):
        t5.get_config("tiny", relative_bias_init_std=-1.0)
