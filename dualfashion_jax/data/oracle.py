"""Oracle for the synthetic outfits dataset: what it reads back from pixels (category/colour/material/style) and
the world's outfit rules, vectorised. The metrics built on it live in `evaluators/oracle_metrics.py`.

`decode_attributes(images)` reads garments back from uint8 [N, S, S, 3] images (fast numpy, no learning
framework). Images are first white-balanced on their border. Colour = vote of the garment's interior pixels
for the nearest palette segment [base colour, pattern shade]; material = a shared-covariance Gaussian (LDA)
classifier on statistics of the pattern map (shade coverage, autocorrelation along the stripe/twill/check
directions at the pattern periods); category = 5-nearest-neighbour template matching of the silhouette's
coverage map. The classifiers are calibrated at first use, per (image size, shapes), on renders from
`data/synthetic/render.py` with random blur and noise, so they tolerate the blurry output of a weak
generator. Style follows from colour x material.
"""
from __future__ import annotations

import functools

import numpy as np
from PIL import Image
from scipy import ndimage

from dualfashion_jax.data.synthetic import attributes as A
from dualfashion_jax.data.synthetic import fashion_mnist, render

FOREGROUND_DIST = 60.0  # RGB distance from white above which a pixel is garment
# Autocorrelation lags (dy, dx): directions of stripes/twill/checks and the half/full pattern periods.
_LAGS = ((0, 1), (1, 0), (1, 1), (1, -1), (0, 2), (2, 0), (2, 2), (2, -2), (0, 3), (3, 0), (3, 3), (3, -3),
         (0, 4), (4, 0), (4, 4), (4, -4), (0, 6), (6, 0))
_GRID = 16  # category templates are compared at 16x16
_K = 5
_SEG_A = A.COLOR_RGB  # [K, 3] segment starts (base colours)
_SEG_B = np.stack([render.pattern_shade(k) for k in range(len(A.COLORS))])  # [K, 3] pattern shades


def degrade(images: np.ndarray, rng: np.random.Generator, blur_sigma: float | np.ndarray = 1.0,
            noise_sigma: float | np.ndarray = 8.0) -> np.ndarray:
    """Gaussian blur (sigma in px) + gaussian noise (uint8 units), per image; imitates a weak generator."""
    imgs = _check_images(images).astype(np.float32)
    n = imgs.shape[0]
    blur = np.broadcast_to(np.asarray(blur_sigma, np.float32), (n,))
    noise = np.broadcast_to(np.asarray(noise_sigma, np.float32), (n,))
    out = np.empty_like(imgs)
    for i in range(n):
        out[i] = ndimage.gaussian_filter(imgs[i], (blur[i], blur[i], 0)) if blur[i] > 0 else imgs[i]
    out += rng.standard_normal(out.shape).astype(np.float32) * noise[:, None, None, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _check_images(images: np.ndarray) -> np.ndarray:
    a = np.asarray(images)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] != 3 or a.shape[1] != a.shape[2]:
        raise ValueError(f"images must be [N, S, S, 3] RGB (NHWC), got shape {list(a.shape)}")
    if a.dtype != np.uint8:
        raise ValueError(f"images must be uint8 in [0, 255], got dtype {a.dtype} (convert with "
                         "np.clip(np.rint((x + 1) * 127.5), 0, 255).astype(np.uint8) for [-1, 1] floats)")
    if not render.MIN_SIZE <= a.shape[1] <= render.MAX_SIZE:
        raise ValueError(f"image size {a.shape[1]} out of range [{render.MIN_SIZE}, {render.MAX_SIZE}]")
    return a


def _white_balance(imgs: np.ndarray) -> np.ndarray:
    """Scale each channel so the background (median of the 1-px border ring) becomes white. float32 [N, S, S, 3]

    Generators often paint an off-white or slightly tinted background; without this, the whole frame would
    count as garment. The gain is clamped to [1, 2] so non-white-background images are left roughly alone.
    """
    x = imgs.astype(np.float32)
    ring = np.concatenate([x[:, 0], x[:, -1], x[:, 1:-1, 0], x[:, 1:-1, -1]], axis=1)  # [N, 4S-4, 3]
    gain = np.clip(255.0 / np.maximum(np.median(ring, axis=1), 1.0), 1.0, 2.0)  # [N, 3]
    return np.minimum(x * gain[:, None, None, :], 255.0)


def _colour_and_pattern_map(imgs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per image: colour [N], colour confidence [N], pattern map t in [0, 1] [N, S, S], interior mask [N, S, S]."""
    x = _white_balance(imgs)
    fg = np.linalg.norm(255.0 - x, axis=-1) > FOREGROUND_DIST  # [N, S, S]
    it = max(1, imgs.shape[1] // 32)
    interior = ndimage.binary_erosion(fg, structure=np.ones((1, 3, 3), bool), iterations=it)
    small = interior.reshape(interior.shape[0], -1).sum(1) < 4
    interior[small] = fg[small]  # tiny garments: fall back to the un-eroded mask
    a, d = _SEG_A, _SEG_B - _SEG_A  # [K, 3] segment start and direction
    dd = (d * d).sum(-1)  # [K]
    xd = np.einsum("nhwc,kc->nhwk", x, d) - (a * d).sum(-1)  # <x - a, d>  [N, S, S, K]
    t = np.clip(xd / dd, 0.0, 1.0)
    xa2 = (x * x).sum(-1, keepdims=True) - 2.0 * np.einsum("nhwc,kc->nhwk", x, a) + (a * a).sum(-1)  # |x - a|^2
    dist2 = xa2 - 2.0 * t * xd + t * t * dd  # |x - (a + t d)|^2  [N, S, S, K]
    nearest = dist2.argmin(-1)  # [N, S, S]
    k = len(A.COLORS)
    votes = np.stack([((nearest == c) & interior).sum((1, 2)) for c in range(k)], -1).astype(np.float32)  # [N, K]
    total = votes.sum(-1)
    colour = np.where(total > 0, votes.argmax(-1), -1)
    conf = np.where(total > 0, votes.max(-1) / np.maximum(total, 1.0), 0.0)
    pmap = np.take_along_axis(t, np.maximum(colour, 0)[:, None, None, None], -1)[..., 0]  # [N, S, S]
    return colour, conf, pmap, interior


def _shifted_pairs(a: np.ndarray, dy: int, dx: int) -> tuple[np.ndarray, np.ndarray]:
    """a[:, y, x] and a[:, y + dy, x + dx] over the overlapping window. [N, H', W'] each."""
    s = a.shape[1]
    ys, xs = slice(max(0, -dy), s - max(0, dy)), slice(max(0, -dx), s - max(0, dx))
    ys2, xs2 = slice(max(0, dy), s - max(0, -dy)), slice(max(0, dx), s - max(0, -dx))
    return a[:, ys, xs], a[:, ys2, xs2]


def _pattern_features(pmap: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Statistics of the pattern map inside the garment. [N, F] float64."""
    m = mask.astype(np.float64)
    cnt = np.maximum(m.sum((1, 2)), 1.0)
    mean = (pmap * m).sum((1, 2)) / cnt
    cen = (pmap - mean[:, None, None]) * m
    var = (cen ** 2).sum((1, 2)) / cnt
    feats = [mean, np.sqrt(var)]
    for dy, dx in _LAGS:  # normalised autocorrelation at the pattern periods
        (c1, c2), (m1, m2) = _shifted_pairs(cen, dy, dx), _shifted_pairs(m, dy, dx)
        w = m1 * m2
        cov = (c1 * c2).sum((1, 2)) / np.maximum(w.sum((1, 2)), 1.0)
        feats.append(cov / np.maximum(var, 1e-3))
    return np.stack(feats, -1)


def _coverage(imgs: np.ndarray) -> np.ndarray:
    """Soft silhouette at 16x16, unit-normalised. [N, 256]"""
    cov = np.clip(np.linalg.norm(255.0 - _white_balance(imgs), axis=-1) / 120.0, 0.0, 1.0)  # [N, S, S]
    s = cov.shape[1]
    if s % _GRID == 0:
        f = s // _GRID
        small = cov.reshape(-1, _GRID, f, _GRID, f).mean((2, 4))
    else:
        small = np.stack([np.asarray(Image.fromarray(c).resize((_GRID, _GRID), Image.BILINEAR)) for c in cov])
    flat = small.reshape(cov.shape[0], -1)
    return flat / np.maximum(np.linalg.norm(flat, axis=-1, keepdims=True), 1e-6)


class Oracle:
    """Attribute decoder calibrated on degraded renders of one image size and shape source."""

    def __init__(self, image_size: int = 32, shapes: str = "procedural", per_combo: int = 2, seed: int = 1234):
        if shapes not in ("procedural", "fashion_mnist"):
            raise ValueError(f"shapes must be 'procedural' or 'fashion_mnist', got {shapes!r}")
        self.image_size, self.shapes = image_size, shapes
        rng = np.random.default_rng(seed)
        if shapes == "fashion_mnist":
            fm_images, fm_labels = fashion_mnist.load()
            pools = fashion_mnist.pool_by_category(fm_labels)
        combos = [(c, k, m) for c in range(len(A.CATEGORIES)) for k in range(len(A.COLORS))
                  for m in range(len(A.MATERIALS))] * per_combo
        imgs, cats, mats = [], [], []
        for c, k, m in combos:
            sil = None
            if shapes == "fashion_mnist":
                sil = fashion_mnist.silhouette(fm_images[pools[c][rng.integers(len(pools[c]))]])
            imgs.append(render.render_item(c, k, m, int(rng.integers(len(A.FEATURES))),
                                           render.Jitter.sample(rng), image_size, silhouette=sil))
            cats.append(c)
            mats.append(m)
        imgs = np.stack(imgs)
        n = imgs.shape[0]
        clean = rng.random(n) < 0.3
        imgs = degrade(imgs, rng, np.where(clean, 0.0, rng.uniform(0.5, 1.5, n)),
                       np.where(clean, 0.0, rng.uniform(0.0, 12.0, n)))
        self._templates = _coverage(imgs)  # [M, 256]
        self._template_cat = np.asarray(cats)
        feats = [_pattern_features(*_colour_and_pattern_map(imgs[i:i + 256])[2:]) for i in range(0, n, 256)]
        self._fit_lda(np.concatenate(feats), np.asarray(mats))

    def _fit_lda(self, x: np.ndarray, y: np.ndarray, shrink: float = 0.05) -> None:
        """Shared-covariance Gaussian classifier with diagonal shrinkage, on standardised features."""
        self._mu, self._sd = x.mean(0), x.std(0) + 1e-6
        z = (x - self._mu) / self._sd
        means = np.stack([z[y == m].mean(0) for m in range(len(A.MATERIALS))])  # [K_mat, F]
        resid = z - means[y]
        cov = resid.T @ resid / z.shape[0]
        cov = (1 - shrink) * cov + shrink * np.eye(cov.shape[0])
        prec = np.linalg.inv(cov)
        self._lda_w = means @ prec  # [K_mat, F]
        self._lda_b = -0.5 * np.einsum("kf,kf->k", self._lda_w, means)

    def decode(self, images: np.ndarray, batch: int = 256) -> dict[str, np.ndarray]:
        """category/colour/material/style int64 [N] (-1 for a blank image) and their *_conf float [N]."""
        imgs = _check_images(images)
        if imgs.shape[1] != self.image_size:
            raise ValueError(f"oracle calibrated for {self.image_size}px images, got {imgs.shape[1]}px")
        parts = [self._decode(imgs[i:i + batch]) for i in range(0, imgs.shape[0], batch)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _decode(self, imgs: np.ndarray) -> dict[str, np.ndarray]:
        colour, colour_conf, pmap, mask = _colour_and_pattern_map(imgs)
        z = (_pattern_features(pmap, mask) - self._mu) / self._sd
        logits = z @ self._lda_w.T + self._lda_b  # [N, K_mat]
        post = np.exp(logits - logits.max(-1, keepdims=True))
        post /= post.sum(-1, keepdims=True)
        sims = _coverage(imgs) @ self._templates.T  # [N, M]
        top = np.argsort(-sims, axis=-1)[:, :_K]
        votes = np.stack([(self._template_cat[top] == c).sum(-1) for c in range(len(A.CATEGORIES))], -1)
        blank = colour < 0
        category = np.where(blank, -1, votes.argmax(-1))
        material = np.where(blank, -1, post.argmax(-1))
        style = np.where(blank, -1, A.STYLE_TABLE[np.maximum(colour, 0), np.maximum(material, 0)])
        return {"category": category.astype(np.int64), "colour": colour.astype(np.int64),
                "material": material.astype(np.int64), "style": style.astype(np.int64),
                "category_conf": np.where(blank, 0.0, votes.max(-1) / _K),
                "colour_conf": colour_conf.astype(np.float64), "material_conf": np.where(blank, 0.0, post.max(-1))}


@functools.lru_cache(maxsize=4)
def get_oracle(image_size: int = 32, shapes: str = "procedural") -> Oracle:
    """The calibrated oracle for (image size, shapes), built once per process (about a second at 32 px).

    Fashion-MNIST silhouettes vary within a class, so that mode keeps more category templates; from 64 px
    up one render per combination suffices (and keeps calibration around a second).
    """
    per_combo = 3 if shapes == "fashion_mnist" else (2 if image_size < 64 else 1)
    return Oracle(image_size, shapes, per_combo=per_combo)


def decode_attributes(images: np.ndarray, shapes: str = "procedural") -> dict[str, np.ndarray]:
    """Decode uint8 [N, S, S, 3] garment images -> {category, colour, material, style, *_conf} arrays [N]."""
    imgs = _check_images(images)
    return get_oracle(int(imgs.shape[1]), shapes).decode(imgs)


# ---------------------------------------------------------------------------------------------- world rules
def compatible_batch(category: np.ndarray, colour: np.ndarray, material: np.ndarray) -> np.ndarray:
    """Vectorised `world.rule_compatible` for outfits [N, 4] of attribute indices (-1 = undecodable). [N] bool"""
    cat, col, mat = (np.asarray(x, np.int64) for x in (category, colour, material))
    valid = (cat >= 0).all(-1) & (col >= 0).all(-1) & (mat >= 0).all(-1)
    cat, col, mat = np.maximum(cat, 0), np.maximum(col, 0), np.maximum(mat, 0)
    role_id = {r: i for i, r in enumerate(dict.fromkeys(A.ROLES))}
    roles = np.asarray([role_id[r] for r in A.ROLES])[cat]  # [N, 4]
    distinct = (roles[:, :, None] != roles[:, None, :]).sum((1, 2)) == 12
    harmony = A.harmony_matrix()[col[:, :, None], col[:, None, :]].all((1, 2))
    bold = np.isin(mat, A.BOLD_MATERIALS).sum(-1) <= 1
    style = A.STYLE_TABLE[col, mat]  # [N, 4]
    majority = np.stack([(style == s).sum(-1) for s in range(len(A.STYLES))], -1).max(-1) >= 3
    return valid & distinct & harmony & bold & majority
