"""Entry point of a persistent helper process (``python -m crypto.worker``): jobs on stdin, replies on
stdout, until stdin closes. See ``crypto.processes`` for the protocol.

A job is ``{"task", "args", "shared"}``; ``shared`` maps names to ``(kind, digest, payload)``, the
payload None when the helper is believed to hold that object already. The reply is ``("ok",
result)``, ``("error", "Type: message", traceback)`` or ``("missing", names)``.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections import OrderedDict
from typing import Any

from crypto.processes import SHARED_CAPACITY, read_frame, write_frame

# Job kinds: "module:function", called as function(**shared objects, **args).
TASKS = {
    "ready": "crypto.worker:ready",
    "fit": "crypto.fitting:run_share",
    "encrypt": "crypto.head:encrypt_share",
    "evaluate_single": "crypto.head:evaluate_single_share",
    "batched_sums": "crypto.head:batched_sums_share",
}


def _resolve(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def ready(**shared: Any) -> None:
    """A job that only builds its shared objects (``HelperPool.warm``)."""


def build(kind: str, payload: Any) -> Any:
    """The object a :class:`crypto.processes.Shared` names, from its payload."""
    from crypto.head import EncryptedLinearHead
    from crypto.kit import CkksKit
    from crypto.params import CKKSParams

    if kind == "public_kit":
        return CkksKit.from_public(payload["data"], min_security_bits=payload["min_security_bits"])
    if kind == "secret_kit":
        return CkksKit.from_secret(CKKSParams.from_json(payload["params"]), payload["secret_key"])
    if kind == "head":
        return EncryptedLinearHead(payload["coef"], payload["intercept"])
    raise ValueError(f"unknown shared object kind {kind!r}")


class Cache:
    """The objects this helper keeps, most recently used last (``SHARED_CAPACITY`` of them, the
    order the parent mirrors)."""

    def __init__(self) -> None:
        self._items: OrderedDict[bytes, Any] = OrderedDict()

    def resolve(self, refs: dict[str, tuple]) -> tuple[dict[str, Any], list[str]]:
        found, missing = {}, []
        for name, (kind, digest, payload) in refs.items():
            if payload is not None:
                self._items[digest] = build(kind, payload)
            if digest in self._items:
                self._items.move_to_end(digest)
                found[name] = self._items[digest]
            else:
                missing.append(name)
            while len(self._items) > SHARED_CAPACITY:
                self._items.popitem(last=False)
        return found, missing


def handle(message: dict, cache: Cache) -> tuple:
    try:
        shared, missing = cache.resolve(message["shared"])
        if missing:
            return ("missing", missing)
        return ("ok", _resolve(TASKS[message["task"]])(**shared, **message["args"]))
    except Exception as err:  # reported to the parent, which raises it
        return ("error", f"{type(err).__name__}: {err}", traceback.format_exc())


def main() -> None:
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not corrupt the protocol
    jobs = sys.stdin.buffer
    for module in {path.split(":")[0] for path in TASKS.values()}:  # imported while still idle
        importlib.import_module(module)
    cache = Cache()
    while (message := read_frame(jobs)) is not None:
        reply = handle(message, cache)
        try:
            write_frame(replies, reply)
        except BrokenPipeError:
            break  # the parent is gone
        except Exception as err:  # a result that cannot be pickled: nothing was written yet
            write_frame(replies, ("error", f"{type(err).__name__}: {err}", traceback.format_exc()))


if __name__ == "__main__":
    main()
