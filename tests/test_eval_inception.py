"""50-way Inception-v3 (IS family): converter + random-weight parity vs torchvision's real `Inception3`,
preprocessing parity vs torch `F.interpolate`, and the IS metrics against hand-computed values.

The torch side is torchvision 0.28.0's own `Inception3` class, imported from the extracted wheel sources
(`reference/torchvision_shim.py`: torchvision cannot be imported whole beside torch 2.13).
"""
import math

import numpy as np
import pytest

from dualfashion_jax.core import params as core_params
from dualfashion_jax.evaluators.nets import weights as ev
from dualfashion_jax.evaluators import inception_score, preprocess
from dualfashion_jax.evaluators.nets import inception_v3
from eval_nets_support import randomize_batchnorm, upstream_modules

TOL = 1e-4  # parity tolerance (absolute, fp32, logits of magnitude ~1) -- observed ~1e-6


@pytest.fixture(scope="module")
def torch_and_flax():
    torch = pytest.importorskip("torch")
    tv = upstream_modules()
    torch.manual_seed(0)
    ref = tv["inception"].Inception3(num_classes=50, aux_logits=True, transform_input=True, init_weights=False).eval()
    randomize_batchnorm(ref)
    with torch.no_grad():  # larger head weights so that logits are O(1)
        ref.fc.weight.normal_(0, 0.05)
        ref.AuxLogits.fc.weight.normal_(0, 0.05)
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    assert len(sd) == 580  # incl. AuxLogits and num_batches_tracked
    flat = ev.inception_v3_from_torch(sd)
    from flax import nnx
    model = ev.build(lambda: inception_v3.InceptionV3(rngs=nnx.Rngs(0)), flat, source="random torchvision Inception3")
    return torch, ref, model


@pytest.mark.torch
@pytest.mark.slow
def test_inception_v3_parity_random_weights(torch_and_flax):
    torch, ref, model = torch_and_flax
    from flax import nnx

    x = np.random.RandomState(0).uniform(-1, 1, (2, 299, 299, 3)).astype(np.float32)
    logits, aux = nnx.jit(lambda m, x: m(x, with_aux=True))(model, x)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2))
    with torch.no_grad():
        want = ref(xt).numpy()  # eval mode: main logits only
        h = ref._transform_input(xt)
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
                     "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
                     "Mixed_6c", "Mixed_6d", "Mixed_6e"):
            h = getattr(ref, name)(h)
        want_aux = ref.AuxLogits(h).numpy()
    assert np.abs(want).max() > 0.1
    np.testing.assert_allclose(np.asarray(logits), want, atol=TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(aux), want_aux, atol=TOL, rtol=0)


@pytest.mark.torch
def test_converter_names_every_bad_key(torch_and_flax):
    torch, ref, _ = torch_and_flax
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    with pytest.raises(core_params.ConversionError, match="unexpected keys.*Mixed_5b.bogus"):
        ev.inception_v3_from_torch({**sd, "Mixed_5b.bogus.weight": np.zeros(3, np.float32)})
    bad = dict(sd)
    bad["fc.weight"] = np.zeros((10, 2048), np.float32)  # a 10-way head into a 50-way model
    del bad["Mixed_7c.branch_pool.bn.running_var"]
    from flax import nnx
    with pytest.raises(core_params.ConversionError) as e:
        ev.build(lambda: inception_v3.InceptionV3(rngs=nnx.Rngs(0)), ev.inception_v3_from_torch(bad), source="ckpt")
    assert "Mixed_7c/branch_pool/bn/var" in str(e.value) and "fc/kernel" in str(e.value)


@pytest.mark.torch
@pytest.mark.parametrize("src,dst", [((28, 28), (299, 299)), ((512, 512), (299, 299)), ((37, 50), (19, 64))])
def test_resize_matches_torch_bilinear(src, dst):
    torch = pytest.importorskip("torch")
    x = np.random.RandomState(1).rand(2, *src, 3).astype(np.float32)
    got = np.asarray(preprocess.resize_bilinear(x, dst))
    want = torch.nn.functional.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2)), size=dst, mode="bilinear",
                                           align_corners=False).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)  # tolerance: fp32 summation order


def test_inception_input_range_and_errors():
    x = np.zeros((1, 32, 32, 3), np.float32)
    y = np.asarray(preprocess.inception_input(x))
    assert y.shape == (1, 299, 299, 3) and np.allclose(y, -1.0)
    with pytest.raises(ValueError, match="NHWC RGB"):
        preprocess.inception_input(np.zeros((1, 3, 32, 32), np.float32))


def test_is_metrics_hand_computed():
    # 3 images, 4 classes; cid -> label mapping {10: 2, 2: 0, 7: 3, 5: 1} (ImageFolder-style order).
    p = np.array([[0.7, 0.1, 0.1, 0.1],
                  [0.25, 0.25, 0.25, 0.25],
                  [0.0, 0.0, 1.0, 0.0]])
    cids = [2, 7, 10]
    cid_to_label = {10: 2, 2: 0, 7: 3, 5: 1}
    m = inception_score.is_metrics(p, cids, cid_to_label)
    h0 = -(0.7 * math.log(0.7) + 3 * 0.1 * math.log(0.1))
    h1 = math.log(4)
    entropy = (h0 + h1 + 0.0) / 3
    assert m["entropy"] == pytest.approx(entropy, abs=1e-9)
    assert m["is_uniform"] == pytest.approx(4 * math.exp(-entropy), rel=1e-9)
    assert m["is_acc_top1"] == pytest.approx(2 / 3)   # img0 argmax 0 == label 0; img1 tie -> class 0 != 3; img2 ok
    assert m["is_acc_top3"] == pytest.approx(2 / 3)   # img1 top-3 (stable ties) = {0, 1, 2}, target 3 missing
    marg = p.mean(axis=0)
    kl = [sum(pi * (math.log(pi) - math.log(mi)) for pi, mi in zip(row, marg) if pi > 0) for row in p]
    assert m["is_standard"] == pytest.approx(math.exp(np.mean(kl)), rel=1e-9)
    # array-form mapping gives the same result
    table = np.zeros(11, np.int64)
    for k, v in cid_to_label.items():
        table[k] = v
    assert inception_score.is_metrics(p, cids, table) == m


def test_is_metrics_errors():
    p = np.full((2, 4), 0.25)
    with pytest.raises(ValueError, match=r"no entry for categories \[99\]"):
        inception_score.is_metrics(p, [1, 99], {1: 0})
    with pytest.raises(ValueError, match="outside the classifier's 4 classes"):
        inception_score.is_metrics(p, [1, 1], {1: 7})
    with pytest.raises(ValueError, match="softmax"):
        inception_score.is_metrics(np.ones((2, 4)), [1, 1], {1: 0})
    with pytest.raises(ValueError, match="2 probability rows"):
        inception_score.is_metrics(p, [1, 1, 1], {1: 0})


@pytest.mark.torch
@pytest.mark.slow
def test_class_probs_batched_matches_torch(torch_and_flax):
    """class_probs (uint8 in, resize + range inside the jit, padded batches) == torch pipeline of the original."""
    torch, ref, model = torch_and_flax
    imgs = np.random.RandomState(2).randint(0, 256, (3, 40, 40, 3)).astype(np.uint8)
    got = inception_score.class_probs(model, imgs, batch_size=2, show_progress=False)
    xt = torch.from_numpy(imgs.transpose(0, 3, 1, 2)).float() / 255.0
    xt = torch.nn.functional.interpolate(xt, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
    with torch.no_grad():
        want = torch.softmax(ref(xt), dim=-1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.torch
def test_load_inception_v3_rejects_pickled_module(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "Inception-finetune-epoch300"
    torch.save(torch.nn.Linear(2, 2), path)  # a whole pickled module, not a state dict
    with pytest.raises(core_params.ConversionError, match=r"(?s)Inception-finetune-epoch300.*model.state_dict\(\)"):
        ev.load_inception_v3(path)
    with pytest.raises(FileNotFoundError):
        ev.load_inception_v3(tmp_path / "missing")
