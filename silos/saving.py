"""Save/load of small fitted objects as ``config.json`` + ``arrays.safetensors`` — nothing pickled.

Writes go to a temporary folder renamed into place, so a crash never leaves a half-written model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file


def save_arrays(path: str | Path, config: dict, arrays: dict[str, np.ndarray]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, tmp / "arrays.safetensors")
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_arrays(path: str | Path, kind: str) -> tuple[dict, dict[str, np.ndarray]]:
    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    if config.get("kind") != kind:
        raise ValueError(f"{path} holds a {config.get('kind')!r}, not a {kind!r}")
    return config, load_file(path / "arrays.safetensors")
