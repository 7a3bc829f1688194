"""Low-level safe file IO for dataset folders: atomic JSON/npz writes, pickle-free reads with named errors.

Writes go to a temporary file that is renamed into place, so a crash never leaves a truncated file. Reads use
`allow_pickle=False` and turn missing, truncated or corrupt files into `FormatError` naming the file.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np


class FormatError(ValueError):
    """A dataset file is missing, truncated or does not match the safe format; the message names the file."""


def _atomic_write_bytes(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")  # per process: hosts writing one folder never share it
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def write_json(path: Path, obj: Any, indent: int | None = None) -> None:
    """Write JSON atomically (tmp file + rename) so a crash never leaves a truncated file behind."""
    data = json.dumps(obj, ensure_ascii=False, indent=indent).encode("utf-8")
    _atomic_write_bytes(Path(path), lambda f: f.write(data))


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write an uncompressed .npz atomically; object arrays are refused (they would need pickle)."""
    for k, a in arrays.items():
        if np.asarray(a).dtype == object:
            raise FormatError(f"{path}: field {k!r} is an object array; the safe format stores numeric arrays only")
    _atomic_write_bytes(Path(path), lambda f: np.savez(f, **arrays))


class _RepeatedKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        raise _RepeatedKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return d


def read_json(path: Path) -> Any:
    """Read a JSON file, turning a missing/truncated/invalid file, or a key repeated within one object (plain
    json keeps the last silently), into a FormatError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f, object_pairs_hook=_unique_keys)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: not valid JSON (truncated or corrupt?): {e}") from None
    except _RepeatedKey as e:
        raise FormatError(f"{path}: key {e.args[0]!r} appears twice in one JSON object (a repeated entry; "
                          "JSON readers would silently keep only the last)") from None


def read_npz(path: Path, fields: Sequence[str]) -> dict[str, np.ndarray]:
    """Read the named fields of an .npz with allow_pickle=False; errors name the file and field."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in fields if k not in z.files]
            if missing:
                raise FormatError(f"{path}: missing field(s) {missing}; found {sorted(z.files)}")
            return {k: np.asarray(z[k]) for k in fields}
    except FormatError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise FormatError(f"{path}: cannot read .npz (truncated or corrupt?): {type(e).__name__}: {e}") from None
