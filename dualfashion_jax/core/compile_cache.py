"""JAX's persistent compilation cache in a folder of the run's own, unless the user configured one.

A resumed or rerun demo then loads its XLA executables instead of compiling them again, and a program compiled
twice in one run (GOR's sampler is PFITB's) compiles once. The cache is trusted code: it must live in a folder
only the user writes (jax's warning), which is why it is the run's output folder and never a shared location.
On CPU the entries' keys do not depend on the folder's path (jax would add XLA's GPU autotune-cache folder to
every key), so a moved or copied folder still loads them.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
from typing import Iterator

import jax
from jax.experimental.compilation_cache import compilation_cache


def configured_dir() -> str | None:
    """The cache folder the user configured (JAX_COMPILATION_CACHE_DIR or jax.config), else None."""
    return jax.config.jax_compilation_cache_dir or None


@contextlib.contextmanager
def scoped(folder: str | os.PathLike) -> Iterator[str]:
    """Caches compiles under `folder` for the block (a user-configured cache wins); yields the folder in use.

    Restores jax's setting afterwards, so later compiles in this process do not write into `folder`."""
    user = configured_dir()
    if user:
        yield user
        return
    folder = str(pathlib.Path(folder).absolute())
    xla_caches = jax.config.jax_persistent_cache_enable_xla_caches
    if jax.default_backend() == "cpu":  # XLA's GPU autotune-cache folder would enter every key: a moved OUT recompiles
        jax.config.update("jax_persistent_cache_enable_xla_caches", "none")
    compilation_cache.reset_cache()  # a cache initialised earlier keeps its path otherwise
    compilation_cache.set_cache_dir(folder)
    try:
        yield folder
    finally:
        compilation_cache.set_cache_dir(None)
        compilation_cache.reset_cache()
        jax.config.update("jax_persistent_cache_enable_xla_caches", xla_caches)
