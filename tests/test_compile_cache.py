"""core/compile_cache.py: the demo's own persistent compile cache, in fresh processes (the suite configures its
own cache, which `scoped` must leave alone)."""
import json
import os
import shutil
import subprocess
import sys

from dualfashion_jax.core import compile_cache

CHILD = r"""
import json, sys
import jax, jax.numpy as jnp
from jax import monitoring
from dualfashion_jax.core import compile_cache
events = []
monitoring.register_event_listener(lambda name, **kw: events.append(name.split("/")[-1]))
f = lambda x: jnp.sin(x) @ x.T
with compile_cache.scoped(sys.argv[1]) as used:
    jax.jit(f)(jnp.ones((8, 8)))
jax.jit(lambda x: jnp.cos(x) * 3)(jnp.ones(5))  # after the block: must not be written anywhere
print("RESULT " + json.dumps({"used": used, "hits": events.count("cache_hits"), "misses": events.count("cache_misses"),
                              "after": jax.config.jax_compilation_cache_dir}))
"""


def _child(folder, **env_extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT"))}
    env.update(JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **env_extra)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(folder)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[7:])


def test_scoped_cache_is_written_then_loaded_and_released(tmp_path):
    folder = tmp_path / "out" / ".jax_cache"
    first = _child(folder)
    assert first["used"] == str(folder) and first["misses"] >= 1 and first["hits"] == 0, first
    assert first["after"] is None  # jax's setting restored
    entries = sorted(p.name for p in folder.iterdir())
    assert entries, "nothing cached"
    second = _child(folder)  # a rerun: the same program comes from the folder
    assert second["hits"] >= 1 and second["misses"] == 0, second
    assert sorted(p.name for p in folder.iterdir()) == entries  # the post-block compile went nowhere


def test_a_copied_cache_still_loads(tmp_path):
    """On CPU the keys do not depend on the folder's path (jax would put XLA's GPU autotune-cache folder in them)."""
    first = tmp_path / "a" / ".jax_cache"
    assert _child(first)["misses"] >= 1
    shutil.copytree(first, tmp_path / "b" / ".jax_cache")
    moved = _child(tmp_path / "b" / ".jax_cache")
    assert moved["hits"] >= 1 and moved["misses"] == 0, moved


def test_a_user_configured_cache_wins(tmp_path):
    mine = tmp_path / "mine"
    got = _child(tmp_path / "out" / ".jax_cache", JAX_COMPILATION_CACHE_DIR=str(mine))
    assert got["used"] == str(mine) and got["after"] == str(mine)
    assert any(mine.iterdir()) and not (tmp_path / "out").exists()


def test_configured_dir_reads_jax_config():
    assert compile_cache.configured_dir() == os.environ.get("JAX_COMPILATION_CACHE_DIR")  # conftest sets one
