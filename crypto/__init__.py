"""CKKS building blocks of the protocol (TenSEAL). Knows nothing of Flower, models or configs."""

from crypto.context import (
    context_from_bytes,
    context_slots,
    make_context,
    public_context_bytes,
    secret_context_bytes,
)
from crypto.fitting import CrossProductPacking
from crypto.head import EncryptedLinearHead
from crypto.params import CKKSParams, InsecureParametersError
from crypto.serialization import CiphertextError, vectors_from_bytes, vectors_to_bytes

__all__ = [
    "CKKSParams",
    "CiphertextError",
    "CrossProductPacking",
    "EncryptedLinearHead",
    "InsecureParametersError",
    "context_from_bytes",
    "context_slots",
    "make_context",
    "public_context_bytes",
    "secret_context_bytes",
    "vectors_from_bytes",
    "vectors_to_bytes",
]
