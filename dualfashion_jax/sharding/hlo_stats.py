"""What a compiled, partitioned program does per device, read from its optimized HLO text.

`compiled.cost_analysis()` counts a while-loop (scan) body once; here every computation is weighted by how
often it runs: while bodies by their `known_trip_count`, fusions/calls/branches by their caller's count.
Reported per device: matmul FLOPs (dot + convolution; elementwise work excluded), every collective with its
count and buffer bytes (the full-size buffer: all-gather output, reduce-scatter input, all-reduce /
all-to-all / permute operand), classified as weights / gradients (the buffer's dims match a parameter's, or
one layer of a stacked parameter's), scalars, or activations (flagged full-batch when a dim equals the global
batch times a token count). Used by benchmarks/partitioning.py and tests/test_partitioning.py.
"""
from __future__ import annotations

import collections
import dataclasses
import math
import re
from typing import Iterable, Sequence

_DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
                "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_SHAPE = re.compile(r"\b(pred|[suf]\d+|bf16|c64|c128|f8\w*)\[([\d,]*)\]")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->\s*.*\{\s*$")
_CALLS = re.compile(r"\b(calls|body)=%?([\w.\-]+)")
_CALL_LISTS = re.compile(r"\b(branch_computations|called_computations)=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute",
               "collective-broadcast", "ragged-all-to-all")
_FULL_FROM_OPERAND = ("reduce-scatter", "all-to-all", "collective-permute", "collective-broadcast",
                      "ragged-all-to-all")

Shape = tuple[str, tuple[int, ...]]


def shape_bytes(shape: Shape) -> float:
    dtype, dims = shape
    return _DTYPE_BYTES.get(dtype, 1) * math.prod(dims)


def _parse_shapes(text: str) -> list[Shape]:
    return [(m.group(1), tuple(int(d) for d in m.group(2).split(",") if d)) for m in _SHAPE.finditer(text)]


def _split_type(rest: str) -> tuple[str, str]:
    """'(f32[2], s32[]) op(...)' -> ('(f32[2], s32[])', 'op(...)'); balanced parens for tuple types."""
    if not rest.startswith("("):
        head, _, tail = rest.partition(" ")
        return head, tail
    depth = 0
    for i, ch in enumerate(rest):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            return rest[:i + 1], rest[i + 1:].lstrip()
    return rest, ""


@dataclasses.dataclass
class Instr:
    name: str
    opcode: str
    shapes: list[Shape]      # result shapes (tuple results: one per element)
    operands: list[str]
    attrs: str


def parse(text: str) -> tuple[dict[str, list[Instr]], str]:
    """Optimized HLO module text -> ({computation: instructions}, entry computation name)."""
    comps: dict[str, list[Instr]] = {}
    entry, cur = "", None
    for line in text.splitlines():
        h = _HEADER.match(line)
        if h:
            cur = comps.setdefault(h.group(2), [])
            entry = h.group(2) if h.group(1) else entry
            continue
        if cur is None or line.strip() == "}":
            continue
        m = _INSTR.match(line)
        if not m:
            continue
        typ, body = _split_type(m.group(2))
        op = re.match(r"([\w\-]+)\((.*)", body)
        if not op:
            continue
        args, depth, i = op.group(2), 1, 0
        while i < len(args) and depth:
            depth += (args[i] == "(") - (args[i] == ")")
            i += 1
        cur.append(Instr(m.group(1), op.group(1), _parse_shapes(typ), re.findall(r"%([\w.\-]+)", args[:i - 1]),
                         args[i:]))
    if not entry:
        raise ValueError("hlo_stats.parse: no ENTRY computation in the HLO text")
    return comps, entry


def _dot_flops(ins: Instr, shapes: dict[str, list[Shape]]) -> float:
    out = math.prod(ins.shapes[0][1])
    lhs = shapes.get(ins.operands[0], [("f32", ())])[0][1]
    m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", ins.attrs)
    contracted = math.prod(lhs[int(d)] for d in m.group(1).split(",") if d) if m else 1
    return 2.0 * out * contracted


def _conv_flops(ins: Instr, shapes: dict[str, list[Shape]]) -> float:
    out = math.prod(ins.shapes[0][1])
    kernel = shapes.get(ins.operands[1], [("f32", ())])[0][1]
    labels = re.search(r"dim_labels=\w+_(\w+)->", ins.attrs)
    o_size = kernel[labels.group(1).index("o")] if labels and kernel else 1
    return 2.0 * out * math.prod(kernel) / max(o_size, 1)


@dataclasses.dataclass
class Collective:
    opcode: str              # without the -start suffix
    count: float             # executions per step (trip counts applied)
    buffers: list[Shape]     # the full-size buffers it moves (one per tuple element)
    groups: str              # replica_groups text

    @property
    def bytes(self) -> float:
        return self.count * sum(shape_bytes(s) for s in self.buffers)


@dataclasses.dataclass
class HloStats:
    matmul_flops: float
    collectives: list[Collective]
    unknown_trip_loops: int  # while loops without known_trip_count (counted once)


_LAYOUT_ONLY = ("bitcast", "copy", "reshape")
_MOVES = ("all-gather", "all-to-all", "collective-permute", "collective-broadcast")


def _widened_from(comps: dict[str, list[Instr]], producers: dict[str, Instr], name: str) -> str | None:
    """The dtype (bf16/f16) the f32 value `name` was widened from by its last convert, else None.

    Why: XLA:CPU has no bf16 collectives, so it widens a bf16 operand to f32 just before the collective (a
    convert, or a fusion whose root is such a convert up to layout ops); on GPU/TPU the collective moves bf16.
    """
    ins, scope = producers.get(name), producers
    for _ in range(16):
        if ins is None:
            return None
        if ins.opcode == "fusion":
            callee = _CALLS.search(ins.attrs)
            body = comps.get(callee.group(2), []) if callee else []
            if not body:
                return None
            scope = {i.name: i for i in body}
            ins = body[-1]  # the ROOT is printed last
            continue
        if ins.opcode in _LAYOUT_ONLY and ins.operands:
            ins = scope.get(ins.operands[0])
            continue
        if ins.opcode == "convert" and ins.operands:
            src = scope.get(ins.operands[0])
            dtype = src.shapes[0][0] if src is not None and src.shapes else None
            return dtype if dtype in ("bf16", "f16") else None
        return None
    return None


def _wire_shapes(comps, producers: dict[str, Instr], ins: Instr, bufs: list[Shape]) -> list[Shape]:
    """`bufs` of a data-movement collective with f32 relabelled to the dtype the values were widened from (what
    an accelerator moves). Reductions keep f32: widening before a sum is a precision choice, not a CPU detail."""
    if ins.opcode.removesuffix("-start") not in _MOVES or len(bufs) != 1 or len(ins.operands) != 1 or bufs[0][0] != "f32":
        return bufs
    narrow = _widened_from(comps, producers, ins.operands[0])
    return [(narrow, bufs[0][1])] if narrow else bufs


def analyze_text(text: str) -> HloStats:
    """Matmul FLOPs and collectives per device of one optimized HLO module, loop trip counts applied.

    A `conditional` runs one branch per execution: its most expensive branch (FLOPs, then collective bytes) is
    counted, not the sum. Collective buffers are counted at the dtype they carry on an accelerator (`_wire_shapes`).
    """
    comps, entry = parse(text)
    shape_maps = {c: {i.name: i.shapes for i in ins} for c, ins in comps.items()}
    producer_maps = {c: {i.name: i for i in ins} for c, ins in comps.items()}
    unknown = [0]

    def walk(comp: str, mult: float, stack: tuple[str, ...], acc: list) -> None:
        """Adds comp's FLOPs (acc[0]) and collectives (acc[1]) at `mult` executions per step."""
        if comp not in comps or comp in stack:
            return
        shapes = shape_maps[comp]
        for ins in comps[comp]:
            op = ins.opcode
            if op == "dot":
                acc[0] += mult * _dot_flops(ins, shapes)
            elif op == "convolution":
                acc[0] += mult * _conv_flops(ins, shapes)
            base = op[:-6] if op.endswith("-start") else op
            if base in COLLECTIVES:
                if base in _FULL_FROM_OPERAND:
                    bufs = [s for o in ins.operands for s in shapes.get(o, [])]
                elif op.endswith("-start") and base == "all-gather":
                    bufs = ins.shapes[len(ins.shapes) // 2:]  # (operands..., outputs...)
                else:
                    bufs = ins.shapes
                bufs = _wire_shapes(comps, producer_maps[comp], ins, bufs)
                groups = re.search(r"replica_groups=([^,]*(?:\{[^}]*\})?)", ins.attrs)
                acc[1].append(Collective(base, mult, bufs, groups.group(1) if groups else ""))
            trip = 1.0
            if op == "while":
                t = _TRIP.search(ins.attrs)
                unknown[0] += t is None
                trip = float(t.group(1)) if t else 1.0
            for kind, callee in _CALLS.findall(ins.attrs):
                walk(callee, mult * (trip if kind == "body" else 1.0), stack + (comp,), acc)
            for kind, names in _CALL_LISTS.findall(ins.attrs):
                callees = re.findall(r"%?([\w.\-]+)", names)
                if kind != "branch_computations":
                    for callee in callees:
                        walk(callee, mult, stack + (comp,), acc)
                    continue
                branches = []
                for callee in callees:
                    sub = [0.0, []]
                    walk(callee, mult, stack + (comp,), sub)
                    branches.append(sub)
                if branches:
                    top = max(branches, key=lambda b: (b[0], sum(c.bytes for c in b[1])))
                    acc[0] += top[0]
                    acc[1].extend(top[1])

    acc = [0.0, []]
    walk(entry, 1.0, (), acc)
    return HloStats(acc[0], acc[1], unknown[0])


def _key(dims: Iterable[int]) -> tuple[int, ...]:
    return tuple(sorted(d for d in dims if d != 1))


def param_keys(param_shapes: Iterable[Sequence[int]], stacked_layers: Iterable[int] = (),
               shard_factors: Iterable[int] = ()) -> set[tuple[int, ...]]:
    """Dims (sorted, 1s dropped) of every parameter, of one layer of each stacked [L, ...] parameter, and of
    those with one dim divided by a mesh axis size (a weight gathered over fsdp that stays split over tensor)."""
    keys, layers, factors = set(), set(stacked_layers), sorted({f for f in shard_factors if f > 1})
    for s in param_shapes:
        variants = [tuple(s)] + ([tuple(s[1:])] if len(s) > 1 and s[0] in layers else [])
        for v in variants:
            keys.add(_key(v))
            for i, d in enumerate(v):
                keys.update(_key(v[:i] + (d // f,) + v[i + 1:]) for f in factors if d % f == 0)
    return keys


def classify(c: Collective, shape: Shape, params: set[tuple[int, ...]], full_batch_dims: set[int]) -> str:
    """'weights' | 'gradients' | 'scalars' | 'indices' | 'activations' | 'activations (full batch)' for a buffer."""
    dims = shape[1]
    if math.prod(dims) == 1:
        return "scalars"
    if shape[0][0] in "su" or shape[0] == "pred":  # token ids / masks (e.g. an embedding lookup's indices)
        return "indices"
    if _key(dims) in params:
        return "weights" if c.opcode in ("all-gather", "all-to-all", "collective-permute") else "gradients"
    if full_batch_dims and any(d in full_batch_dims for d in dims):
        return "activations (full batch)"
    return "activations"


def summarize(stats: HloStats, params: set[tuple[int, ...]], full_batch_dims: set[int] = frozenset()) -> dict:
    """{(opcode, kind): {"count", "bytes"}} over every collective buffer (counts per step, trip counts applied)."""
    out: dict = collections.defaultdict(lambda: {"count": 0.0, "bytes": 0.0})
    for c in stats.collectives:
        for s in c.buffers:
            row = out[(c.opcode, classify(c, s, params, full_batch_dims))]
            row["count"] += c.count
            row["bytes"] += c.count * shape_bytes(s)
    return dict(out)


def full_batch_dims(global_batch: int, per_device_batch: int, token_counts: Iterable[int]) -> set[int]:
    """Dims that reveal a full-batch activation: B and B x tokens (flattened [B*L, D]); empty if B is local.
    A product that is also a per-device one (8 x 12 = 4 x 24) is left out: the linear layers' `[b*L, D]` is local."""
    if global_batch <= per_device_batch:
        return set()
    counts = [t for t in token_counts if t > 1]
    local = {per_device_batch * t for t in counts}
    return {global_batch} | ({global_batch * t for t in counts} - local)


def report(compiled, *, weight_shapes: Iterable[Sequence[int]], stacked_layers: Iterable[int], weight_bytes: int,
           global_batch: int, per_device_batch: int, token_counts: Iterable[int],
           shard_factors: Iterable[int] = ()) -> dict:
    """One row per compiled program: matmul GFLOPs, memory_analysis MiB and collectives by (op, what), per device.

    `gathered_weight_ratio` = all-gathered weight bytes / the program's weight bytes (ZeRO-3 ideal: 1 for a
    forward, 1-2 for a train step depending on whether gathered weights are kept for the backward pass).
    """
    stats = analyze_text(compiled.as_text())
    full = full_batch_dims(global_batch, per_device_batch, token_counts)
    summ = summarize(stats, param_keys(weight_shapes, stacked_layers, shard_factors), full)
    mem = compiled.memory_analysis()
    mib = 2.0 ** 20
    peak = mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + mem.temp_size_in_bytes
    gathered = summ.get(("all-gather", "weights"), {"bytes": 0.0})["bytes"]
    return {
        "gflops": stats.matmul_flops / 1e9, "unknown_trip_loops": stats.unknown_trip_loops,
        "args_mib": mem.argument_size_in_bytes / mib, "temp_mib": mem.temp_size_in_bytes / mib, "peak_mib": peak / mib,
        "weight_mib": weight_bytes / mib, "gathered_weight_ratio": gathered / max(weight_bytes, 1),
        "full_batch_mib": sum(v["bytes"] for (_, k), v in summ.items() if k.endswith("(full batch)")) / mib,
        "collectives": {f"{op}:{k}": {"count": v["count"], "mib": v["bytes"] / mib} for (op, k), v in sorted(summ.items())},
    }
