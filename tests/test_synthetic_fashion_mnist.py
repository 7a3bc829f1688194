"""Fashion-MNIST silhouettes for the synthetic dataset (needs Debian's dataset-fashion-mnist; skipped otherwise)."""
import gzip
import json

import numpy as np
import pytest
from PIL import Image

from dualfashion_jax.data.format import SafeDataset
from dualfashion_jax.data.synthetic import attributes as A
from dualfashion_jax.data.synthetic import fashion_mnist, load_truth, make_dataset, render

pytestmark = pytest.mark.skipif(not fashion_mnist.available(),
                                reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def test_loader_and_class_mapping():
    images, labels = fashion_mnist.load()
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10
    pools = fashion_mnist.pool_by_category(labels)
    assert [len(p) for p in pools] == [1000 * len(c) for c in A.FASHION_MNIST_CLASSES]
    assert sum(len(p) for p in pools) == 10000


def test_dataset_uses_fashion_mnist_shapes(tmp_path):
    kw = dict(seed=2, num_users=8, items_per_combo=1, train_outfits=(1, 2), verbose=False)
    fm = make_dataset(tmp_path / "fm", shapes="fashion_mnist", **kw)
    proc = make_dataset(tmp_path / "proc", **kw)
    labels = fashion_mnist.load()[1]
    truth = load_truth(fm)
    items = json.loads((fm / "truth" / "items.json").read_text())
    ds_fm, ds_proc = SafeDataset(fm), SafeDataset(proc)
    assert (ds_fm.split("test").outfits == ds_proc.split("test").outfits).all()  # same world, other shapes
    for iid in range(1, 41):
        fm_idx = items[str(iid)]["fm_index"]
        assert labels[fm_idx] in A.FASHION_MNIST_CLASSES[truth.item["category"][iid]]
        a = np.asarray(Image.open(ds_fm.image_file(iid)))
        b = np.asarray(Image.open(ds_proc.image_file(iid)))
        assert (a != b).any()


def test_silhouette_follows_the_source_image():
    """Rendered without jitter at 50 px, the garment covers the source item mapped into the central 84 %."""
    images, _ = fashion_mnist.load()
    for idx in (0, 1, 2, 3, 17, 123):
        img = render.render_item(0, 4, 0, 0, render.Jitter(), size=50,
                                 silhouette=fashion_mnist.silhouette(images[idx]))
        garment = (255 - img.astype(int)).sum(-1) > 150  # navy blue garment vs white
        src = np.zeros((50, 50), bool)
        src[4:46, 4:46] = np.asarray(Image.fromarray(images[idx]).resize((42, 42), Image.BILINEAR)) > 40
        iou = (garment & src).sum() / (garment | src).sum()
        assert iou > 0.8, (idx, iou)
    with pytest.raises(ValueError, match=r"\[28, 28\]"):
        fashion_mnist.silhouette(np.zeros((32, 32), np.uint8))


def test_corrupt_file_is_named(tmp_path):
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        with gzip.open(tmp_path / name, "wb") as fh:
            fh.write(b"\x00\x00\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz: bad IDX magic"):
        fashion_mnist.load("t10k", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        fashion_mnist.load("t10k", str(tmp_path / "missing"))
