"""`core.host_memory`: glibc keeps freed buffers in-process (no per-step page faults), opt-out and bad values."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from dualfashion_jax.core import host_memory

# A train step's pattern: large temporaries allocated and freed every step, from worker threads too.
PROBE = textwrap.dedent("""
    import ctypes, resource, threading
    from dualfashion_jax.core import host_memory
    applied = host_memory.keep_freed_memory()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    def work():
        for _ in range(20):
            p = libc.malloc(48 << 20)        # > glibc's largest mmap threshold (32 MiB)
            ctypes.memset(p, 1, 48 << 20)    # touch every page, as a kernel writing its output does
            libc.free(p)
    work()                                   # warm-up (the heap grows once)
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = threading.Thread(target=work); t.start(); t.join(); work()
    print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 40)
""")

def _probe(choice: str) -> tuple[bool, float]:
    env = {**os.environ, host_memory.ENV: choice}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", float(faults)


@pytest.mark.skipif(host_memory._glibc() is None, reason="glibc mallopt only (Linux)")
def test_kept_memory_is_not_page_faulted_back_each_step():
    kept, faults_kept = _probe("keep")
    default, faults_default = _probe("default")
    assert kept and not default
    assert faults_default > 6000, faults_default   # 48 MiB = 12288 pages re-faulted per allocation
    assert faults_kept < 50, faults_kept            # reused from the heap


def test_bad_setting_names_the_variable(monkeypatch):
    monkeypatch.setattr(host_memory, "_applied", None)
    monkeypatch.setenv(host_memory.ENV, "tcmalloc")
    with pytest.raises(ValueError, match="DUALFASHION_JAX_MALLOC='tcmalloc'.*'keep'.*'default'"):
        host_memory.keep_freed_memory()
