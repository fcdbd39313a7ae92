"""SEAL objects to and from bytes, with errors that name the bad input instead of crashing the silo.

TenSEAL's ``sealapi`` binds SEAL's ``save``/``load`` to file paths only, so objects pass through an
anonymous in-memory file (``memfd``): no disk, no temporary names, nothing left behind. ``load``
runs SEAL's own validity checks (parameters, sizes, ranges), so malformed or foreign bytes are
refused here.

SEAL's checks cannot see a flipped bit in a ciphertext's coefficients, nor a ciphertext made with
another secret key under the same parameters: such bytes load and decrypt to garbage. So every
serialised object carries a header: a BLAKE2b digest (16 bytes) of the rest, then the 8-byte id of
the key it belongs to (``tag``; zeros when none), both checked before SEAL reads the bytes. Corrupt,
truncated or foreign-key bytes are refused instead of silently computed on. This catches mistakes
and corruption, not an adversary (who can recompute both; deployments run over TLS).
"""

from __future__ import annotations

import functools
import hashlib
import os
import struct
import threading
from typing import Any

import numpy as np

DIGEST_BYTES = 16
TAG_BYTES = 8
NO_TAG = bytes(TAG_BYTES)
HEADER_BYTES = DIGEST_BYTES + TAG_BYTES


class CiphertextError(ValueError):
    """Bytes that do not deserialise to a SEAL object under the given parameters."""


class _MemFile(threading.local):
    """One anonymous in-memory file per thread, reached by SEAL through /proc/self/fd."""

    def __init__(self) -> None:
        self.fd = os.memfd_create("seal", os.MFD_CLOEXEC)
        self.path = f"/proc/self/fd/{self.fd}"


_FILE = _MemFile()


@functools.cache
def seal_version() -> tuple[int, int]:
    """(major, minor) that this SEAL writes into its serialisation headers (and accepts)."""
    import tenseal.sealapi as seal

    os.ftruncate(_FILE.fd, 0)
    seal.Plaintext().save(_FILE.path)
    header = os.pread(_FILE.fd, 5, 0)
    return header[3], header[4]


def dump(obj: Any, tag: bytes = NO_TAG) -> bytes:
    """Serialise a SEAL object (or a seeded ``Serializable``) with SEAL's compression, behind the
    digest + key id header."""
    if len(tag) != TAG_BYTES:
        raise ValueError(f"a key id has {TAG_BYTES} bytes, got {len(tag)}")
    os.ftruncate(_FILE.fd, 0)
    obj.save(_FILE.path)
    size = os.fstat(_FILE.fd).st_size
    data = bytes(tag) + os.pread(_FILE.fd, size, 0)
    return _digest(data) + data


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).digest()


def load_into(obj: Any, seal_context: Any, data: bytes, what: str = "ciphertext",
              tag: bytes | None = None) -> Any:
    """Load ``data`` into an empty SEAL object of the right type; CiphertextError if invalid,
    corrupt, or (``tag`` given) made under another key."""
    if not isinstance(data, bytes | bytearray) or len(data) <= HEADER_BYTES:
        size = f"{len(data)} bytes" if isinstance(data, bytes | bytearray) else type(data).__name__
        raise CiphertextError(f"{what}: expected a serialised SEAL object, got {size}")
    digest, body = bytes(data[:DIGEST_BYTES]), bytes(data[DIGEST_BYTES:])
    if _digest(body) != digest:
        raise CiphertextError(f"{what}: checksum mismatch (corrupted or truncated bytes)")
    found, body = body[:TAG_BYTES], body[TAG_BYTES:]
    if tag is not None and found != tag:
        raise CiphertextError(f"{what}: made under another key (key id {found.hex()}, expected "
                              f"{tag.hex()}): not this querier's context")
    os.ftruncate(_FILE.fd, 0)
    os.pwrite(_FILE.fd, body, 0)
    try:
        obj.load(seal_context, _FILE.path)
    except Exception as err:  # SEAL raises bare ValueError/RuntimeError on bad or foreign data
        raise CiphertextError(f"{what}: not valid for these parameters ({err})") from None
    return obj


def assemble_ciphertext(seal_context: Any, data: np.ndarray, level: Any, scale: float, *,
                        ntt_form: bool) -> Any:
    """A SEAL ciphertext with the given residues, (parts, primes, N) uint64 at ``level``.

    sealapi can read a ciphertext's coefficients but not write them, so the object is assembled in
    SEAL's own uncompressed serialisation and loaded: SEAL checks every residue against its prime.
    """
    import tenseal.sealapi as seal

    parts, n_primes, n = data.shape
    array = struct.pack("<Q", data.size) + np.ascontiguousarray(data, dtype=np.uint64).tobytes()
    members = (struct.pack("<4Q", *level) + (b"\x01" if ntt_form else b"\x00")
               + struct.pack("<QQQdQ", parts, n, n_primes, scale, 1) + _seal_header(len(array))
               + array)
    body = _seal_header(len(members)) + members
    os.ftruncate(_FILE.fd, 0)
    os.pwrite(_FILE.fd, body, 0)
    ciphertext = seal.Ciphertext()
    ciphertext.load(seal_context, _FILE.path)
    return ciphertext


def _seal_header(payload: int) -> bytes:
    """SEAL's 16-byte serialisation header (magic, size, version, no compression, total bytes)."""
    return struct.pack("<HBBBBHQ", 0xA15E, 16, *seal_version(), 0, 0, 16 + payload)
