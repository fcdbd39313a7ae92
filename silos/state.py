"""Typed access to a node's ``context.state`` (a Flower RecordDict): arrays and config values."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict


def put_arrays(state: RecordDict, key: str, **arrays: np.ndarray) -> None:
    state[key] = ArrayRecord({name: Array(np.ascontiguousarray(a)) for name, a in arrays.items()})


def get_arrays(state: RecordDict, key: str, what: str) -> dict[str, np.ndarray]:
    if key not in state:
        raise LookupError(what)
    return {name: array.numpy() for name, array in state[key].items()}


def put_config(state: RecordDict, key: str, **values) -> None:
    # A new record, never an in-place edit: handlers work on a shallow copy of the node's state.
    merged = dict(state[key]) if key in state else {}
    merged.update(values)
    state[key] = ConfigRecord(merged)


def get_config(state: RecordDict, key: str, what: str) -> ConfigRecord:
    if key not in state:
        raise LookupError(what)
    return state[key]
