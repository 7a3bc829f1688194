"""The stage modules map examples to exactly the keys their loss reads (data/keys.py), renaming nothing: a key the
loss needs under another name than the data's would fail here, not inside a jitted step."""
import shutil

import numpy as np
import pytest

from dualfashion_jax.data import examples as E, keys as K
from dualfashion_jax.data.format import SafeDataset, sentence_text
from dualfashion_jax.data.tiny import make_tiny_dataset
from dualfashion_jax.diffusion import stages
from dualfashion_jax.text import tokenizer as tk
from dualfashion_jax.training import stage1, stage2, stage3


@pytest.fixture(scope="module", params=[K.IMAGE, K.LATENT])
def data(request, tmp_path_factory):
    """(dataset, tokenizer) whose visuals are images, or pre-encoded latents."""
    root = make_tiny_dataset(tmp_path_factory.mktemp("tiny") / "ds", num_items=12, rows_per_split=4)
    ds = SafeDataset(root)
    if request.param == K.LATENT:
        (root / "latents").mkdir()
        np.save(root / "latents" / "latents.npy", np.zeros((ds.num_items + 1, 2, 2, 4), np.float32))
        ds = SafeDataset(root)
    texts = [tk.caption_json(v["elements"]) for v in ds.item_info.values()]
    texts += [sentence_text(c) for c in ds.categories.values()] + [tk.caption_json({})]
    tok = tk.build_test_tokenizer(texts, tmp_path_factory.mktemp("tok"), vocab_size=150, max_length=96)
    return ds, tok, request.param


def _as_latents(batch):
    """The batch the loss sees: `<role>_images` VAE-encoded into `<role>_latents` (stage_parts.encode_visuals)."""
    return {k.replace("_images", "_latents"): v for k, v in batch.items()}


def _unchanged(batch, example):
    """Every mapped field is the example's field of the same name, untouched."""
    for k, v in batch.items():
        assert v is example[k], k


def test_stage1_batch_holds_the_loss_keys(data):
    ds, tok, kind = data
    src = E.Stage1Source(ds, tok, use_latents="auto")
    assert src.kind == kind
    a, b = src[0], src[1]
    batch = stage1.batch({K.T2I: a, K.I2T: b}, kind)
    assert set(_as_latents(batch)) == set(stages.STAGE1_KEYS) | {K.T2I_REAL_IDS, K.IDS}
    assert batch[K.T2I_IDS] is a[K.RE_CAPTION_IDS] and batch[K.T2I_REAL_IDS] is a[K.CAPTION_IDS]
    assert batch[K.visual(kind, K.T2I)] is a[K.visual(kind)] and batch[K.visual(kind, K.I2T)] is b[K.visual(kind)]
    _unchanged({k: batch[k] for k in (K.CAPTION_IDS, K.CAPTION_LABEL_MASK)}, b)
    assert batch[K.IDS] is a[K.IDS]


def test_stage2_batch_holds_the_loss_keys(data):
    ds, tok, kind = data
    ex = E.Stage2Source(ds, tok, use_latents="auto")[0]
    batch = stage2.batch({"main": ex}, kind)
    assert set(_as_latents(batch)) == set(stages.STAGE2_KEYS) | {K.IDS}
    _unchanged(batch, ex)


def test_stage3_batch_holds_the_loss_keys(data):
    ds, tok, _ = data
    ex = E.Stage3Source(ds, tok)[0]
    batch = stage3.batch({"main": ex})
    assert set(batch) == set(stages.STAGE3_KEYS) | {K.IDS}
    _unchanged(batch, ex)


def test_visual_keys():
    assert K.visual(K.LATENT, K.TARGET) == "target_latents" and K.visual(K.IMAGE) == "images"
    with pytest.raises(ValueError, match="visual kind"):
        K.visual("pixels")
