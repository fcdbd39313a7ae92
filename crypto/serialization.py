"""CKKS vectors to and from bytes, with errors that name the bad input instead of crashing the silo."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import tenseal as ts


class CiphertextError(ValueError):
    """Bytes that do not deserialise to a CKKS vector under the given context."""


def vectors_to_bytes(vectors: Iterable[ts.CKKSVector]) -> list[bytes]:
    return [v.serialize() for v in vectors]


def vectors_from_bytes(context: ts.Context, blobs: Sequence[bytes]) -> list[ts.CKKSVector]:
    """Deserialise ciphertexts and link them to ``context``."""
    vectors = []
    for i, blob in enumerate(blobs):
        if not isinstance(blob, bytes | bytearray) or not blob:
            raise CiphertextError(f"ciphertext {i}: expected non-empty bytes")
        try:
            vectors.append(ts.ckks_vector_from(context, bytes(blob)))
        except Exception as err:
            raise CiphertextError(f"ciphertext {i}: not a CKKS vector ({err})") from None
    return vectors
