"""CKKS building blocks of the protocol (SEAL through TenSEAL's sealapi). Knows nothing of Flower,
models or configs."""

from crypto.fitting import CrossProductPacking
from crypto.head import (
    EncryptedLinearHead,
    SinglePlan,
    decrypt_logits,
    encrypt_queries,
    query_capacity,
)
from crypto.kit import CkksKit, KeyMaterialError
from crypto.params import CKKSParams, InsecureParametersError, InsecureParametersWarning
from crypto.privacy import CircuitPrivacy
from crypto.processes import HelperError
from crypto.serialization import CiphertextError

__all__ = [
    "CKKSParams",
    "CiphertextError",
    "CircuitPrivacy",
    "CkksKit",
    "CrossProductPacking",
    "EncryptedLinearHead",
    "HelperError",
    "InsecureParametersError",
    "InsecureParametersWarning",
    "KeyMaterialError",
    "SinglePlan",
    "decrypt_logits",
    "encrypt_queries",
    "query_capacity",
]
