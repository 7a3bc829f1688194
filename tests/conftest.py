"""Test-session setup: 8 fake CPU devices, XLA's LLVM backend at -O0, fp32 matmuls (DUALFASHION_TEST_XLA=user: a
user's XLA settings instead), no hub access, a persistent compile cache.

All of this must happen before JAX initialises a backend, hence at import time.
"""
import os

# DUALFASHION_TEST_XLA=user (scripts/test_latest.sh): XLA as a user has it (1 CPU device, LLVM -O2, default matmul
# precision), the fresh-machine demo test's settings: its fast demo then loads the programs that test compiled.
_XLA = os.environ.get("DUALFASHION_TEST_XLA", "suite")
if _XLA not in ("suite", "user"):
    raise ValueError(f"DUALFASHION_TEST_XLA: expected 'suite' (default) or 'user', got {_XLA!r}")
if _XLA == "suite":
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    # jax_disable_most_optimizations: XLA:CPU's LLVM backend at -O0 without its expensive passes (child processes
    # inherit it). The HLO, buffers, FLOPs and collectives are unchanged; results move by rounding only (no FMA
    # contraction at -O0: the tiny MMDiT's loss is bit-equal, its gradient leaves within 1e-8), while a cold
    # compile is ~35 % shorter, and first compiles are most of a fresh clone's CI time. Compute-bound tests take
    # `xla_optimized`; the fresh-machine demo test runs at XLA's defaults, as a user does.
    os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
    os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # otherwise hub ids retry DNS for minutes
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
_cache = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".jax_cache")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _cache)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# keys independent of the cache folder's path (jax adds XLA's GPU autotune-cache folder to every key otherwise), as
# in the demo's own cache on CPU: what the fresh-machine demo test cached in its folder loads from the suite's
os.environ.setdefault("JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES", "none")

import pathlib  # noqa: E402

import pytest  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"
SPLITS = SHARED / "data" / "difashion_splits"


@pytest.fixture
def xla_optimized():
    """XLA's default optimisation for this test's compiles (a test that runs hundreds of steps: -O0 doubles it)."""
    import jax
    from jax._src import compiler  # defines the flag; jax.config.update switches it for later compiles

    before = compiler._DISABLE_MOST_OPTIMIZATIONS.value
    jax.config.update("jax_disable_most_optimizations", False)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture(scope="session")
def splits_dir() -> pathlib.Path:
    """The real DiFashion split files (read-only, never copied into the repo)."""
    if not SPLITS.is_dir():
        pytest.skip(f"real split files not found at {SPLITS} (point ../shared at a DiFashion download)")
    return SPLITS


# Files that take minutes go first: scripts/test.sh hands whole files to two pytest-xdist workers in collection
# order, and a long file started last would leave one worker running it alone at the end.
_SLOW_FILES_FIRST = ("test_demo.py", "test_partitioning.py", "test_partitioning_stages.py",
                     "test_eval_fidelity.py", "test_sessions_engine.py", "test_train_stages.py", "test_mmdit.py",
                     "test_dvbpr_generate.py", "test_sharding.py", "test_checkpoint.py", "test_memory.py",
                     "test_t5_pretrain.py")


def pytest_collection_modifyitems(items):
    """Stable sort: the slow files above first, each file's own test order kept."""
    rank = {name: i for i, name in enumerate(_SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
