"""The `dualfashion-jax` console script: a thin dispatcher to one module per subcommand.

Each subcommand module exposes `main(argv: list[str]) -> int` with its own argparse parser, and is
imported only when its command runs (so `dualfashion-jax data ...` never pays for torch or the model).
"""
from __future__ import annotations

import importlib
import sys

from dualfashion_jax.core import host_memory

# name -> (module, one-line help). Modules own their flags.
COMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("dualfashion_jax.conversion.cli", "convert PyTorch/diffusers/transformers checkpoints to orbax"),
    "data": ("dualfashion_jax.data.cli", "build/convert/validate datasets (make-demo, convert-real, validate)"),
    "encode-latents": ("dualfashion_jax.data.encode_latents", "VAE-encode a dataset's images once"),
    "train": ("dualfashion_jax.training.main", "train a stage: --config configs/<stage>.py:<size> --workdir DIR"),
    "generate": ("dualfashion_jax.generation.cli", "PFITB / GOR generation for every row of a split"),
    "evaluate": ("dualfashion_jax.evaluators.cli", "compute recommendation metrics on generated results"),
    "demo": ("dualfashion_jax.demo", "end to end on the built-in dataset: data, 3 training stages, generation, eval"),
}


def _usage() -> str:
    lines = ["usage: dualfashion-jax <command> [args]", "", "commands:"]
    lines += [f"  {name:<16}{help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `dualfashion-jax <command> --help` for a command's flags."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"dualfashion-jax: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    host_memory.keep_freed_memory()  # before any JAX allocation: no per-step page faults on CPU
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
