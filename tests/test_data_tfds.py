"""Optional TFDS ArrayRecord builder: prepared examples equal the direct source's, in order; feeds BatchIterator."""
import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")

from dualfashion_jax.data import examples as E  # noqa: E402
from dualfashion_jax.data.format import SafeDataset, sentence_text  # noqa: E402
from dualfashion_jax.data.pipeline import BatchIterator  # noqa: E402
from dualfashion_jax.data.tfds_builder import build_stage_tfds  # noqa: E402
from dualfashion_jax.data.tiny import make_tiny_dataset  # noqa: E402
from dualfashion_jax.text import tokenizer as tk  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("tfds")
    ds = SafeDataset(make_tiny_dataset(d / "ds", num_items=20, rows_per_split=4))
    texts = [tk.caption_json(v["elements"]) for v in ds.item_info.values()]
    texts += [sentence_text(c) for c in ds.categories.values()] + [tk.caption_json({})]
    tok = tk.build_test_tokenizer(texts, d / "tok", vocab_size=100, max_length=96)
    return d, ds, tok


def test_prepared_stage2_matches_source_and_loads(setup):
    d, ds, tok = setup
    b = build_stage_tfds(ds.root, d / "tok", d / "out", stage=2, max_length=96)
    src, ref = b.as_data_source("train"), E.Stage2Source(ds, tok)
    assert len(src) == len(ref) == 16
    for i in (0, 7, 15):
        ex, want = src[i], ref[i]
        assert set(ex) == set(want)
        assert all(np.array_equal(ex[k], want[k]) and np.asarray(ex[k]).dtype == want[k].dtype for k in want)
    batch = next(BatchIterator(src, global_batch_size=4, seed=0, process_index=0, process_count=1))
    assert batch["context_images"].shape == (4, 3, 16, 16, 3)


def test_fingerprint_tracks_sources_and_stage3(setup):
    d, ds, tok = setup
    a = build_stage_tfds(ds.root, d / "tok", d / "out", stage=3, max_length=96)
    again = build_stage_tfds(ds.root, d / "tok", d / "out", stage=3, max_length=96)
    assert a.builder_config.name == again.builder_config.name
    assert a.as_data_source("train")[0]["caption_ids"].shape == (3, 96)
    aug = {k: v[:2] for k, v in ds.augmented.items()}
    from dualfashion_jax.data.writer import DatasetWriter

    DatasetWriter(ds.root).write_augmented(aug)
    changed = build_stage_tfds(ds.root, d / "tok", d / "out", stage=3, max_length=96)
    assert changed.builder_config.name != a.builder_config.name
    assert changed.as_data_source("train")[0]["caption_ids"].shape == (2, 96)
