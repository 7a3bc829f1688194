"""What each demo phase was built from (`OUT/phases.json`), so a rerun resumes, skips or redoes it, never mixes.

A phase records the ids of the phases it read when it starts, and a fresh id of its own when it finishes. On a
rerun a finished phase whose inputs still carry the recorded ids is skipped; an unfinished one resumes; one built
from anything else (an input that was redone since, or a folder without a record) is moved to `OUT/stale/` and
redone, which in turn gives it a new id and so redoes every later phase. `OUT/plan.json` ties a folder to one plan.
"""
from __future__ import annotations

import json
import pathlib
import shutil
import time
import uuid
from typing import Any, Callable, Iterable, Mapping

LEDGER, PLAN = "phases.json", "plan.json"


class DemoPlanMismatch(ValueError):
    """OUT was made by a demo with other settings; names the differing fields."""


class DemoInterrupted(Exception):
    """SIGTERM / SIGINT stopped the demo; finished phases and the running stage's checkpoint are kept."""

    def __init__(self, signal_name: str, phase: str):
        super().__init__(f"{signal_name} during phase {phase!r}: stopped; finished phases and the last checkpoint "
                         f"are kept. Rerun the same command to resume")
        self.signal_name, self.phase = signal_name, phase


def claim_plan(out: pathlib.Path, plan: Mapping[str, Any]) -> None:
    """Writes OUT/plan.json, or refuses when OUT already holds a demo of another plan."""
    path = out / PLAN
    new = json.loads(json.dumps(plan))  # tuples -> lists, as stored
    if path.is_file():
        old = json.loads(path.read_text())
        diff = [f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}"
                for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        if diff:
            raise DemoPlanMismatch(f"{out} holds a demo made with other settings ({'; '.join(diff)}); its data and "
                                   f"models are not reused for this plan. Use a new --out folder")
        return
    path.write_text(json.dumps(new, indent=2))


class Ledger:
    """OUT/phases.json: {phase: {"built_from": {input phase: id}, "id": id once finished}}."""

    def __init__(self, out: pathlib.Path, log: Callable[[str], None] = print):
        self.out, self.log, self.path = out, log, out / LEDGER
        self.entries: dict[str, dict] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def _inputs(self, deps: Iterable[str]) -> dict[str, str | None]:
        return {d: self.entries.get(d, {}).get("id") for d in deps}

    def is_current(self, name: str, deps: Iterable[str], outputs: Iterable[str]) -> bool:
        """Finished, built from the current ids of `deps`, and every output still there."""
        e = self.entries.get(name, {})
        return bool(e.get("id")) and e.get("built_from") == self._inputs(deps) and all(
            (self.out / o).exists() for o in outputs)

    def start(self, name: str, deps: Iterable[str], outputs: Iterable[str]) -> None:
        """Moves outputs built from other inputs (or of unknown origin) to OUT/stale/, then records the start."""
        deps = list(deps)
        e = self.entries.get(name)
        resumable = e is not None and e.get("built_from") == self._inputs(deps) and not e.get("id")
        if not resumable:
            stale = [o for o in outputs if (self.out / o).exists()]
            if stale:
                dest = self.out / "stale" / f"{name}.{time.strftime('%Y%m%d-%H%M%S')}"
                for o in stale:
                    (dest / o).parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(str(self.out / o), str(dest / o))
                self.log(f"demo: {name}: {', '.join(stale)} were built from other inputs; moved to {dest} and redone")
        self.entries[name] = {"built_from": self._inputs(deps), "id": None}
        self._save()

    def finish(self, name: str) -> None:
        self.entries[name]["id"] = uuid.uuid4().hex
        self._save()

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.entries, indent=2))
        tmp.replace(self.path)
