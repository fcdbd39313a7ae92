"""Save/load of small fitted objects (maps, heads) as one safetensors file — nothing pickled.

The config travels in the file's metadata, so an object is a single file, and a single file can be
replaced atomically: it is written to a temporary file in the same folder, flushed to disk, then
renamed over the old one (``os.replace``). A crash mid-write leaves the previous version intact and
no partial file under the real name.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it to ``path``.

    Same folder, so the rename is atomic; the data is fsynced first, so the new name never points
    at a half-written file after a crash, and the folder after, so the rename itself survives one
    (a query budget must not fall back to an older count). On any failure the temporary file is
    removed and ``path`` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    return path


def atomic_save_file(arrays: dict[str, np.ndarray], path: str | Path,
                     metadata: dict[str, str] | None = None) -> Path:
    """``safetensors.numpy.save_file``, atomically."""
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    return atomic_write(path, lambda tmp: save_file(arrays, tmp, metadata=metadata))


def save_arrays(path: str | Path, config: dict, arrays: dict[str, np.ndarray]) -> Path:
    return atomic_save_file(arrays, path, metadata={"config": json.dumps(config, sort_keys=True)})


def load_arrays(path: str | Path, kind: str) -> tuple[dict, dict[str, np.ndarray]]:
    """The config and arrays :func:`save_arrays` wrote, refused if they are another kind's."""
    path = Path(path)
    with safe_open(str(path), framework="numpy") as handle:
        config = json.loads((handle.metadata() or {}).get("config", "{}"))
    arrays = load_file(path)
    if config.get("kind") != kind:
        raise ValueError(f"{path} holds a {config.get('kind')!r}, not a {kind!r}")
    return config, arrays
