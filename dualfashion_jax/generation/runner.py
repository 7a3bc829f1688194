"""Runs PFITB or GOR over every row of a split: resumable, batched, sharded over devices and hosts.

Rows 0..max_rows-1 of the split (all by default) minus those with a done marker are split round-robin over
processes; each process generates its rows in fixed-size batches (rounded up to a multiple of its devices on
the mesh's batch axes; the last batch is padded with filler rows whose results are dropped, and a process
that ran out joins the remaining collective calls with filler rows). Each row's files are written as soon as
its batch finishes, so an interrupted run loses at most one batch. Process 0 then merges every row into
records.json / captions JSON / index.html. With several hosts, --out must be a shared filesystem.
A results dir remembers its settings (run.json); resuming with different ones is an error.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import warnings
from typing import Any, Callable

import jax
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from dualfashion_jax.generation import outputs
from dualfashion_jax.generation.gor import generate_gor
from dualfashion_jax.generation.inputs import SplitInputs
from dualfashion_jax.generation.pfitb import generate_pfitb
from dualfashion_jax.generation.sampling import Programs, batch_multiple, make_mesh
from dualfashion_jax.generation.settings import TASKS, GenSettings, check_resume
from dualfashion_jax.text.tokenizer import TruncationWarning, caption_json

GENERATORS: dict[str, Callable] = {"pfitb": generate_pfitb, "gor": generate_gor}
RUN_FILE = "run.json"


@dataclasses.dataclass
class RunSummary:
    out: pathlib.Path
    rows: int            # rows of the run (split rows, capped by max_rows)
    generated: int       # rows generated now by this process
    skipped: int         # rows already done before this call
    records: int         # records written (process 0), 0 elsewhere


def _max_over_processes(n: int) -> int:
    if jax.process_count() == 1:
        return n
    return int(np.max(multihost_utils.process_allgather(np.asarray([n]))))


def normalized_sampler(saved: Any) -> Any:
    """A run.json's sampler settings with the fields it predates filled in with their defaults (unchanged when
    they do not parse: `check_resume` then names the difference)."""
    try:
        return json.loads(json.dumps(GenSettings.from_json(saved).to_json()))
    except (TypeError, ValueError, AttributeError):
        return saved


def run(task: str, bundle, settings: GenSettings, *, out, split: str = "test", data_dir: str | None = None,
        rows_per_batch: int = 4, max_rows: int | None = None, mesh=None, progress: bool = True,
        original_layout: bool = False, param_sharding: str = "dp", dvbpr=None, dvbpr_info=None) -> RunSummary:
    """Generates `task` for rows [0, max_rows) of `split` into `out` (see module docstring). `dvbpr`: the DVBPR
    model of `settings.score` (eta > 0), `dvbpr_info` its provenance for run.json."""
    if task not in TASKS:
        raise ValueError(f"task {task!r}: expected one of {TASKS}")
    if rows_per_batch < 1:
        raise ValueError(f"rows_per_batch must be >= 1, got {rows_per_batch}")
    out = pathlib.Path(out)
    outputs.check_out_dir(out)  # the API and the demo get the CLI's protection of foreign folders too
    inputs = SplitInputs(data_dir or bundle.data_dir, split, bundle, settings)
    n = len(inputs) if max_rows is None else min(int(max_rows), len(inputs))
    if n < 1:
        raise ValueError(f"split {split!r} of {inputs.ds.root}: no rows to generate (max_rows={max_rows})")
    run_info = {"task": task, "split": split, "data": str(inputs.ds.root.resolve()), "sampler": settings.to_json(),
                "model": bundle.info.get("source", "<in-memory>"), "step": bundle.info.get("step"),
                "ema": bundle.info.get("ema"), "value_lengths": bundle.value_lengths}
    if bundle.captioner is not None:  # only then: run.json of single-model runs stays as before
        run_info["caption_model"] = bundle.info.get("caption_model")
    if settings.score.eta > 0:  # only then: run.json of runs without DVBPR stays as before
        run_info["dvbpr"] = dvbpr_info or {"source": "<in-memory>"}
    run_path = out / RUN_FILE
    if run_path.is_file():
        previous = json.loads(run_path.read_text())
        previous["sampler"] = normalized_sampler(previous.get("sampler"))  # fields added later take their defaults
        check_resume(previous, json.loads(json.dumps(run_info)), str(run_path))
    elif jax.process_index() == 0:
        out.mkdir(parents=True, exist_ok=True)
        run_path.write_text(json.dumps(run_info, indent=1))

    done = outputs.done_rows(out)
    pending = [i for i in range(n) if i not in done]
    mesh = mesh if mesh is not None else make_mesh(param_sharding=param_sharding)
    mult = batch_multiple(mesh)
    bsz = math.ceil(rows_per_batch / mult) * mult
    local = pending[jax.process_index()::jax.process_count()]
    n_batches = _max_over_processes(math.ceil(len(local) / bsz))
    generated = 0
    cut_before = dataclasses.replace(bundle.tokenizer.truncation)
    if n_batches:
        programs = Programs(bundle, settings, mesh, rules=param_sharding, dvbpr=dvbpr)
        info = inputs.ds.item_info if inputs.ds.has_text("item_info.json") else {}
        gt_caption = lambda iid: caption_json(info[iid]["elements"]) if iid in info else ""  # noqa: E731
        bar = progress_bar(len(local), task, progress and jax.process_index() == 0)
        for b in range(n_batches):
            chunk = local[b * bsz:(b + 1) * bsz]
            rows = [inputs.row(i) for i in (chunk or [pending[0]])]  # filler row if this process ran out
            for res in GENERATORS[task](programs, inputs, rows, bsz, n_real=len(chunk)):
                outputs.write_row(out, res, inputs, settings.seed, gt_caption)
                generated += 1
            bar.update(len(chunk))
        bar.close()
    cut = _truncated_since(bundle.tokenizer, cut_before, f"generate {task} inputs (preferences, sentences)")
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("dualfashion_jax.generation.rows_written")
    n_records = 0
    if jax.process_index() == 0:
        settings_json = {**run_info, "seeds": settings.seed, "rows": n, "bundle": bundle.info,
                         "image_size": bundle.image_size, "truncated_inputs": cut}
        n_records = len(outputs.finalize(out, task, list(range(n)), settings_json, original_layout))
    return RunSummary(out, n, generated, n - len(pending), n_records)


def _truncated_since(tok, before, what: str) -> dict[str, int]:
    """Warns (TruncationWarning, with the count and the first text) about inputs this run cut to max_length."""
    now = tok.truncation
    cut = {"count": now.count - before.count, "total": now.total - before.total}
    if cut["count"]:
        first = now.first if before.first is None else "(see the first warning of this process)"
        msg = dataclasses.replace(now, count=cut["count"], total=cut["total"], first=first).message(what, tok)
        warnings.warn(msg, TruncationWarning, stacklevel=3)
    return cut


def progress_bar(total: int, task: str, enabled: bool) -> Any:
    """The "<task> rows" tqdm bar of every generation task (disabled off process 0 or without --progress)."""
    return tqdm.tqdm(total=total, desc=f"{task} rows", unit="row", disable=not enabled, dynamic_ncols=True)
