"""Where an installed model or corpus package keeps its files, found without importing it (their
imports are heavy, and some have none)."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_dir(module: str, *, install: str | None = None) -> Path:
    """The folder of the installed package ``module``; ModuleNotFoundError, saying what to
    ``pip install --no-deps`` when ``install`` names it, if it is not installed."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        hint = f": pip install --no-deps {install}" if install else ""
        raise ModuleNotFoundError(f"the package {module!r} is not installed{hint}")
    return Path(next(iter(spec.submodule_search_locations)))
