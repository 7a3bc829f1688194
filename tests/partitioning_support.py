"""The partitioning tests' compiler figures: benchmarks/partitioning.py --_child in a subprocess with N fake
devices (so the test process keeps its own 8), one JSON row per program / mode / layer loop."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "partitioning.py")


def compiled_rows(n: int, programs: str, modes: str, layers: str, dtype: str = "float32") -> dict:
    """{(program, mode, layers, devices[, "bf16"]): row} from one child process on n fake CPU devices."""
    # LLVM at -O0: the rows come from XLA's HLO passes (buffer assignment, cost analysis, the partitioned HLO), so
    # they are identical (stage2 on 4 devices: every figure and collective equal), and each compile takes ~36 % less
    flags = f"--xla_force_host_platform_device_count={n} --xla_backend_optimization_level=0"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags}
    proc = subprocess.run([sys.executable, SCRIPT, "--_child", "--devices", str(n), "--programs", programs,
                           "--modes", modes, "--layers", layers, "--dtype", dtype], env=env, capture_output=True,
                          text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(x[7:]) for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    return {(r["program"], r["mode"], r["layers"], r["devices"]) + (("bf16",) if dtype != "float32" else ()): r
            for r in rows}
