"""Deterministic numpy renderer: one garment image uint8 [S, S, 3] from its attributes and a small jitter.

A garment is a filled silhouette (one shape family per category, or a Fashion-MNIST shape) centred on a white
background, tinted with its colour, overlaid with its material's pattern in a contrasting shade of the same
colour, plus a small design-feature mark. Drawn with 3x3 (2x2 from 64 px) supersampling so edges are
anti-aliased; the pattern periods are in output pixels, coarse enough (6-8 px) to survive a weak generator's blur.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from dualfashion_jax.data.synthetic import attributes as A

SUPERSAMPLE = 3  # per axis, below 64 px; 2 from 64 px up (edges are already fine there, and it is 2x faster)
MIN_SIZE, MAX_SIZE = 16, 256
# Procedural silhouettes: polygons in garment coordinates (u right, v down, both in [0, 1]).
_TEE = [(0.33, 0.22), (0.44, 0.20), (0.50, 0.25), (0.56, 0.20), (0.67, 0.22), (0.88, 0.34), (0.82, 0.46),
        (0.68, 0.40), (0.68, 0.84), (0.32, 0.84), (0.32, 0.40), (0.18, 0.46), (0.12, 0.34)]
_PANTS = [(0.26, 0.10), (0.74, 0.10), (0.77, 0.92), (0.54, 0.92), (0.50, 0.36), (0.46, 0.92), (0.23, 0.92)]
_SWEATER = [(0.32, 0.20), (0.44, 0.18), (0.50, 0.22), (0.56, 0.18), (0.68, 0.20), (0.86, 0.40), (0.88, 0.80),
            (0.77, 0.80), (0.70, 0.46), (0.70, 0.82), (0.30, 0.82), (0.30, 0.46), (0.23, 0.80), (0.12, 0.80),
            (0.14, 0.40)]
_DRESS = [(0.40, 0.08), (0.60, 0.08), (0.62, 0.38), (0.80, 0.92), (0.20, 0.92), (0.38, 0.38)]
_COAT = [(0.30, 0.08), (0.70, 0.08), (0.90, 0.26), (0.92, 0.66), (0.80, 0.66), (0.76, 0.36), (0.76, 0.95),
         (0.24, 0.95), (0.24, 0.36), (0.20, 0.66), (0.08, 0.66), (0.10, 0.26)]
_SHOE = [(0.08, 0.50), (0.36, 0.48), (0.52, 0.58), (0.86, 0.64), (0.93, 0.74), (0.92, 0.86), (0.08, 0.86)]
_BAG = [(0.18, 0.42), (0.82, 0.42), (0.86, 0.86), (0.14, 0.86)]
_BOOT = [(0.26, 0.16), (0.56, 0.16), (0.58, 0.58), (0.84, 0.68), (0.88, 0.86), (0.26, 0.86)]
BAG = 6
POLYGONS = (_TEE, _PANTS, _SWEATER, _DRESS, _COAT, _SHOE, _BAG, _BOOT)
BBOXES = tuple(  # (u0, v0, u1, v1) per category, for placing the design-feature marks
    (min(p[0] for p in poly), min(p[1] for p in poly), max(p[0] for p in poly), max(p[1] for p in poly))
    for poly in POLYGONS)


@dataclasses.dataclass(frozen=True)
class Jitter:
    """Per-item variation: isotropic scale, shift (fractions of the image), and an RGB offset of the colour."""

    scale: float = 1.0
    dx: float = 0.0
    dy: float = 0.0
    rgb: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @staticmethod
    def sample(rng: np.random.Generator) -> "Jitter":
        """A small random jitter (scale +-6 %, shift +-3 % of the image, colour +-10 per channel)."""
        return Jitter(scale=float(rng.uniform(0.94, 1.06)), dx=float(rng.uniform(-0.03, 0.03)),
                      dy=float(rng.uniform(-0.03, 0.03)), rgb=tuple(float(x) for x in rng.uniform(-10, 10, 3)))

    def to_json(self) -> dict:
        return {"scale": round(self.scale, 6), "dx": round(self.dx, 6), "dy": round(self.dy, 6),
                "rgb": [round(x, 4) for x in self.rgb]}


def pattern_shade(colour: int, strength: float = 0.5) -> np.ndarray:
    """The contrasting shade a pattern is drawn in: lighter or darker per `attributes.SHADE_LIGHTER`. [3]"""
    base = A.COLOR_RGB[colour]
    if A.SHADE_LIGHTER[colour]:
        return base + (255.0 - base) * strength
    return base * (1.0 - strength)


def _point_in_polygon(u: np.ndarray, v: np.ndarray, poly: list[tuple[float, float]]) -> np.ndarray:
    """Even-odd rule, vectorised over the grid. [H, W] bool."""
    inside = np.zeros(u.shape, dtype=bool)
    n = len(poly)
    for i in range(n):
        (x0, y0), (x1, y1) = poly[i], poly[(i + 1) % n]
        if y0 == y1:
            continue
        crosses = (v >= min(y0, y1)) & (v < max(y0, y1))
        x_at = x0 + (v - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (u < x_at)
    return inside


def _pattern(material: int, pu: np.ndarray, pv: np.ndarray) -> np.ndarray:
    """Where the material's pattern shade goes, in output-pixel units of garment space. [H, W] bool."""
    if material == 0:  # cotton: solid
        return np.zeros(pu.shape, dtype=bool)
    if material == 1:  # denim: diagonal twill lines, period 8 px along u + v (5.7 px across the lines)
        return np.mod(pu + pv, 8.0) < 3.0
    if material == 2:  # striped knit: horizontal stripes, period 6 px
        return np.mod(pv, 6.0) < 3.0
    if material == 3:  # plaid wool: checks, period 8 px
        return (np.mod(pu, 8.0) < 2.5) | (np.mod(pv, 8.0) < 2.5)
    if material == 4:  # polka dot chiffon: dots on a staggered 8 px grid
        row = np.floor(pv / 8.0)
        du = np.mod(pu + 4.0 * np.mod(row, 2.0), 8.0) - 4.0
        dv = np.mod(pv, 8.0) - 4.0
        return du * du + dv * dv < 2.2 * 2.2
    raise ValueError(f"material index {material} out of range [0, {len(A.MATERIALS)})")


def _feature(feature: int, category: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Where the design-feature mark goes (garment coordinates, relative to the category's bbox). [H, W] bool."""
    u0, v0, u1, v1 = BBOXES[category]
    w, h = u1 - u0, v1 - v0
    cu = 0.5 * (u0 + u1)
    if feature == 0:  # plain
        return np.zeros(u.shape, dtype=bool)
    if feature == 1:  # buttons: three dots down the centre
        r = 0.035
        return sum(((u - cu) ** 2 + (v - (v0 + f * h)) ** 2 < r * r) for f in (0.35, 0.55, 0.75)).astype(bool)
    if feature == 2:  # pocket: small square outline in the lower right
        pu0, pv0, s, t = u0 + 0.58 * w, v0 + 0.55 * h, 0.22 * w, 0.035
        outer = (u >= pu0) & (u <= pu0 + s) & (v >= pv0) & (v <= pv0 + s)
        inner = (u >= pu0 + t) & (u <= pu0 + s - t) & (v >= pv0 + t) & (v <= pv0 + s - t)
        return outer & ~inner
    if feature == 3:  # contrasting trim: a band along the top and bottom edges
        return (v < v0 + 0.07 * h) | (v > v1 - 0.07 * h)
    raise ValueError(f"feature index {feature} out of range [0, {len(A.FEATURES)})")


SilhouetteFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def procedural_silhouette(category: int) -> SilhouetteFn:
    """Coverage function (u, v) -> [H, W] float in {0, 1} for a category's procedural shape."""
    if not 0 <= category < len(A.CATEGORIES):
        raise ValueError(f"category index {category} out of range [0, {len(A.CATEGORIES)})")
    poly = POLYGONS[category]
    if category != BAG:
        return lambda u, v: _point_in_polygon(u, v, poly).astype(np.float32)

    def bag(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        r2 = ((u - 0.5) / 0.26) ** 2 + ((v - 0.42) / 0.28) ** 2  # handle: upper half of an elliptic ring
        handle = (r2 < 1.0) & (r2 > 0.55) & (v < 0.42)
        return (_point_in_polygon(u, v, poly) | handle).astype(np.float32)

    return bag


def render_item(category: int, colour: int, material: int, feature: int, jitter: Jitter = Jitter(),
                size: int = 32, silhouette: SilhouetteFn | None = None) -> np.ndarray:
    """Draw one garment. Returns uint8 [size, size, 3] (white background, garment centred)."""
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"image size {size} out of range [{MIN_SIZE}, {MAX_SIZE}]")
    if not 0 <= colour < len(A.COLORS):
        raise ValueError(f"colour index {colour} out of range [0, {len(A.COLORS)})")
    sil = silhouette if silhouette is not None else procedural_silhouette(category)
    ss = SUPERSAMPLE if size < 64 else 2
    n = size * ss
    xs = (np.arange(n, dtype=np.float32) + 0.5) / n
    x, y = np.meshgrid(xs, xs)  # [n, n] each, x right, y down
    u = (x - 0.5 - jitter.dx) / jitter.scale + 0.5
    v = (y - 0.5 - jitter.dy) / jitter.scale + 0.5
    alpha = sil(u, v)  # [n, n] coverage in [0, 1]
    pu, pv = u * size, v * size  # garment coordinates in output pixels
    offset = np.asarray(jitter.rgb, np.float32)
    base = np.clip(A.COLOR_RGB[colour] + offset, 0, 255)
    shade = np.clip(pattern_shade(colour) + offset, 0, 255)
    mark = np.clip(pattern_shade(colour, strength=0.7) + offset, 0, 255)
    rgb = np.broadcast_to(base, (n, n, 3)).copy()  # [n, n, 3]
    rgb[_pattern(material, pu, pv)] = shade
    rgb[_feature(feature, category, u, v)] = mark
    out = 255.0 * (1.0 - alpha[..., None]) + rgb * alpha[..., None]
    out = out.reshape(size, ss, size, ss, 3).mean(axis=(1, 3))  # [size, size, 3]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
