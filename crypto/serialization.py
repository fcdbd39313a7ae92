"""SEAL objects to and from bytes, with errors that name the bad input instead of crashing the silo.

TenSEAL's ``sealapi`` binds SEAL's ``save``/``load`` to file paths only, so objects pass through an
anonymous in-memory file (``memfd``): no disk, no temporary names, nothing left behind. ``load``
runs SEAL's own validity checks (parameters, sizes, ranges), so malformed or foreign bytes are
refused here.
"""

from __future__ import annotations

import os
import threading
from typing import Any


class CiphertextError(ValueError):
    """Bytes that do not deserialise to a SEAL object under the given parameters."""


class _MemFile(threading.local):
    """One anonymous in-memory file per thread, reached by SEAL through /proc/self/fd."""

    def __init__(self) -> None:
        self.fd = os.memfd_create("seal", os.MFD_CLOEXEC)
        self.path = f"/proc/self/fd/{self.fd}"


_FILE = _MemFile()


def dump(obj: Any) -> bytes:
    """Serialise a SEAL object (or a seeded ``Serializable``) with SEAL's compression."""
    os.ftruncate(_FILE.fd, 0)
    obj.save(_FILE.path)
    size = os.fstat(_FILE.fd).st_size
    return os.pread(_FILE.fd, size, 0)


def load_into(obj: Any, seal_context: Any, data: bytes, what: str = "ciphertext") -> Any:
    """Load ``data`` into an empty SEAL object of the right type; CiphertextError if invalid."""
    if not isinstance(data, bytes | bytearray) or not data:
        raise CiphertextError(f"{what}: expected non-empty bytes")
    os.ftruncate(_FILE.fd, 0)
    os.pwrite(_FILE.fd, bytes(data), 0)
    try:
        obj.load(seal_context, _FILE.path)
    except Exception as err:  # SEAL raises bare ValueError/RuntimeError on bad or foreign data
        raise CiphertextError(f"{what}: not valid for these parameters ({err})") from None
    return obj
