"""The package's import layers: every import (top-level or inside a function) goes to the same layer or a lower
one, no two modules import each other through any chain, and imports sit at the top of files except where a
documented start-up cost justifies a function-level import (ALLOWED_FUNCTION_IMPORTS)."""
from __future__ import annotations

import ast
import dataclasses
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "dualfashion_jax"

# Lowest first. A module may import only from its own layer or lower ones (docs/ARCHITECTURE.md).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("core", "sharding"),                                    # 0: params-tree helpers, key paths, Flax options
    ("text",),                                               # 1
    ("models",),                                             # 2: network definitions only
    ("conversion",),                                         # 3: torch / HF / diffusers weights -> our models
    ("modeling",),                                           # 4: build / load a model from a config or checkpoint
    ("data",),                                               # 5
    ("diffusion", "samplers"),                               # 6
    ("training", "generation"),                              # 7
    ("evaluators",),                                         # 8: incl. evaluators/nets and their converters
    ("perf", "reference", "demo", "demo_plan", "demo_state", "demo_report", "cli",  # 9: top; so is every module named cli.py
     "sessions",                                             #    sessions: above generation and evaluators
     "web"),                                                 #    web: the `serve` page, a client of sessions
)
TOP = len(LAYERS) - 1
# Same-layer packages that must not import each other in this direction (per-stage code lives in training).
FORBIDDEN: set[tuple[str, str]] = {("generation", "training")}
ROOT_LAYER = 0  # dualfashion_jax/__init__.py itself (it only sets the global Flax option)

# Function-level imports allowed, per file: {imported top-level name: the start-up reason}.
ALLOWED_FUNCTION_IMPORTS: dict[str, dict[str, str]] = {
    "dualfashion_jax/conversion/common.py": {"torch": "torch only when a .pth/.bin file is read"},
    "dualfashion_jax/evaluators/nets/weights.py": {"torch": "torch only to convert the FID TorchScript once"},
    "dualfashion_jax/evaluators/nets/clip_tokenizer.py": {"ftfy": "optional dependency, used when installed"},
    "dualfashion_jax/text/tokenizer.py": {"transformers": "~1 s import; only loading/building a tokenizer needs it"},
    "dualfashion_jax/data/tfds_builder.py": {"tensorflow_datasets": "optional TFDS path, slow to import"},
    "dualfashion_jax/models/attention_splash.py": {"jax": "TPU-only Pallas kernels, only for the splash backend"},
    "dualfashion_jax/evaluators/llm_judge.py": {"google": "optional google-genai client, only for --metrics llm_judge"},
    "dualfashion_jax/training/metrics.py": {"tensorboardX": "optional TensorBoard writer",
                                            "matplotlib": "~0.5 s import, only when a loss curve is drawn"},
    "dualfashion_jax/training/distributed.py": {"jax": "multi-process runs configure JAX before its first use"},
    # entry points: `--help` and argument errors answer before JAX / TF / orbax load (~3-5 s)
    "dualfashion_jax/training/main.py": {"dualfashion_jax": "train.py loads after jax.distributed.initialize"},
    "dualfashion_jax/generation/cli.py": {"dualfashion_jax": "the model stack loads after flags parse"},
    "dualfashion_jax/web/cli.py": {"dualfashion_jax": "the engine (JAX, the model) loads after flags parse"},
    "dualfashion_jax/demo.py": {"dualfashion_jax": "each phase loads its stack when it runs; --help is instant",
                                "numpy": "with the phase that uses it"},
}


@dataclasses.dataclass(frozen=True)
class Import:
    importer: str    # module name, e.g. "dualfashion_jax.models.t5"
    target: str      # imported name, resolved to a module of the package where it is one
    line: int
    in_function: bool


def module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str, package: str = PACKAGE) -> int:
    """Layer index of a module of the package (a module named `cli` is always the top layer)."""
    parts = module.split(".")
    if parts[-1] == "cli":
        return TOP
    if len(parts) == 1:
        return ROOT_LAYER
    for i, names in enumerate(LAYERS):
        if parts[1] in names:
            return i
    raise AssertionError(f"{module}: its package {parts[1]!r} is in no layer of test_layering.LAYERS; add it")


def collect(root: pathlib.Path, package: str = PACKAGE) -> tuple[dict[str, pathlib.Path], list[Import]]:
    """Every module of `root/package` and every import statement in them (relative ones resolved)."""
    files = {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}
    imports: list[Import] = []
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), filename=str(path))
        imports.extend(_imports(tree, mod, is_pkg, files))
    return files, imports


def _resolve(name: str, modules) -> str:
    """The longest prefix of `name` that is a module of the package, else `name` itself."""
    probe = name
    while probe not in modules and "." in probe:
        probe = probe.rsplit(".", 1)[0]
    return probe if probe in modules else name


def _imports(tree: ast.AST, mod: str, is_pkg: bool, modules) -> list[Import]:
    out: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for a in child.names:
                    out.append(Import(mod, _resolve(a.name, modules), child.lineno, in_function))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    source = ".".join(base + ([child.module] if child.module else []))
                else:
                    source = child.module or ""
                for a in child.names:
                    full = f"{source}.{a.name}"
                    out.append(Import(mod, _resolve(full if full in modules else source, modules), child.lineno,
                                      in_function))
            visit(child, inner)

    visit(tree, False)
    return out


def upward_imports(files, imports, package: str = PACKAGE, skip=frozenset()) -> list[str]:
    """'file:line: importer (layer i) imports target (layer j)' for every import of a higher layer (or a
    FORBIDDEN same-layer direction)."""
    errors = []
    for imp in imports:
        rel = _rel(files[imp.importer])
        if rel in skip or imp.target not in files:
            continue
        lo, hi = layer_of(imp.importer, package), layer_of(imp.target, package)
        pair = tuple(m.split(".")[1] if "." in m else "" for m in (imp.importer, imp.target))
        msg = f"{rel}:{imp.line}: {imp.importer} (layer {lo}) imports {imp.target} (layer {hi})"
        if hi > lo or (hi == lo and pair in FORBIDDEN and lo != TOP):
            errors.append(msg + ("" if hi > lo else f" ({pair[0]} must not import {pair[1]})"))
    return sorted(set(errors), key=errors.index)


def cycles(files, imports, skip=frozenset()) -> list[list[str]]:
    """One concrete cycle per strongly connected component of the module graph with more than one module."""
    graph: dict[str, set[str]] = {m: set() for m in files}
    for imp in imports:
        if imp.target in files and imp.target != imp.importer and _rel(files[imp.importer]) not in skip:
            graph[imp.importer].add(imp.target)
    index, low, stack, on_stack, comps, counter = {}, {}, [], set(), [], [0]

    def strong(v):  # Tarjan's algorithm (recursion depth <= number of modules)
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return [_one_cycle(sorted(c), graph) for c in comps]


def _one_cycle(comp: list[str], graph) -> list[str]:
    """A path start -> ... -> start inside one strongly connected component (breadth-first, shortest)."""
    start, members = comp[0], set(comp)
    prev = {start: None}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & members):
            if w == start:
                path = [v]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                return list(reversed(path)) + [start]
            if w not in prev:
                prev[w] = v
                queue.append(w)
    return comp


def function_imports(files, imports, skip=frozenset(), allowed=None) -> list[str]:
    allowed = ALLOWED_FUNCTION_IMPORTS if allowed is None else allowed
    errors = []
    for imp in imports:
        rel = _rel(files[imp.importer])
        if not imp.in_function or rel in skip:
            continue
        if imp.target.split(".")[0] in allowed.get(rel, {}):
            continue
        errors.append(f"{rel}:{imp.line}: imports {imp.target} inside a function (move it to the top, or add the "
                      "file and the documented start-up reason to ALLOWED_FUNCTION_IMPORTS)")
    return sorted(set(errors), key=errors.index)


def _rel(path: pathlib.Path) -> str:
    parts = path.parts
    return "/".join(parts[parts.index(PACKAGE):]) if PACKAGE in parts else path.as_posix()


# ------------------------------------------------------------------------------------------------------ the package
@pytest.fixture(scope="module")
def package():
    return collect(ROOT)


def test_every_package_has_a_layer(package):
    files, _ = package
    for mod in files:
        layer_of(mod)


def test_no_upward_imports(package):
    files, imports = package
    errors = upward_imports(files, imports)
    assert not errors, "imports against the layer order:\n" + "\n".join(errors)


def test_no_import_cycles(package):
    files, imports = package
    found = cycles(files, imports)
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_imports_at_the_top(package):
    files, imports = package
    errors = function_imports(files, imports)
    assert not errors, "function-level imports:\n" + "\n".join(errors)


def test_allow_lists_name_real_files_with_reasons():
    for rel, names in ALLOWED_FUNCTION_IMPORTS.items():
        assert (ROOT / rel).is_file(), f"ALLOWED_FUNCTION_IMPORTS names a missing file {rel}"
        assert names and all(reason.strip() for reason in names.values()), f"{rel}: every entry needs its reason"


# ---------------------------------------------------------------------------------------- the checks can fail
def _tree(tmp_path: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    for rel, text in files.items():
        p = tmp_path / PACKAGE / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for d in {p.parent for p in (tmp_path / PACKAGE).rglob("*.py")} | {tmp_path / PACKAGE}:
        (d / "__init__.py").touch()
    return tmp_path


def test_self_check_finds_upward_imports_cycles_and_function_imports(tmp_path):
    root = _tree(tmp_path, {
        "core/a.py": "from dualfashion_jax.models import net\n",                 # 0 -> 2: upward
        "models/net.py": "from . import other\n",                                # relative, same layer
        "models/other.py": "def f():\n    from dualfashion_jax.models import net\n",  # cycle + function import
        "conversion/cli.py": "import dualfashion_jax.evaluators.x\n",            # cli.py is the top layer: allowed
        "evaluators/x.py": "import dualfashion_jax.core.a\n",
        "text/t.py": "def g():\n    import torch\n",                               # allowed below
        "generation/g.py": "from dualfashion_jax.training import t\n",          # same layer, forbidden
        "training/t.py": "from dualfashion_jax.generation import h\n",          # same layer, allowed
        "generation/h.py": "",
    })
    files, imports = collect(root)
    up = upward_imports(files, imports)
    assert up == ["dualfashion_jax/core/a.py:1: dualfashion_jax.core.a (layer 0) imports dualfashion_jax.models.net "
                  "(layer 2)",
                  "dualfashion_jax/generation/g.py:1: dualfashion_jax.generation.g (layer 7) imports "
                  "dualfashion_jax.training.t (layer 7) (generation must not import training)"]
    found = cycles(files, imports)
    assert found == [["dualfashion_jax.models.net", "dualfashion_jax.models.other", "dualfashion_jax.models.net"]]
    fn = function_imports(files, imports, allowed={"dualfashion_jax/text/t.py": {"torch": "optional path"}})
    assert len(fn) == 1 and fn[0].startswith("dualfashion_jax/models/other.py:2: imports dualfashion_jax.models.net")
    assert len(function_imports(files, imports, allowed={})) == 2
    assert upward_imports(files, imports, skip={"dualfashion_jax/core/a.py", "dualfashion_jax/generation/g.py"}) == []
