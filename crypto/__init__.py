"""CKKS building blocks of the protocol (SEAL through TenSEAL's sealapi). Knows nothing of Flower,
models or configs."""

from crypto.cost import CostModel, PathCost, choose_path
from crypto.fitting import CrossProductPacking
from crypto.head import (
    EncryptedLinearHead,
    SinglePlan,
    decrypt_logits,
    encrypt_queries,
    prepare_workers,
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
    "CostModel",
    "CrossProductPacking",
    "EncryptedLinearHead",
    "HelperError",
    "InsecureParametersError",
    "InsecureParametersWarning",
    "KeyMaterialError",
    "PathCost",
    "SinglePlan",
    "choose_path",
    "decrypt_logits",
    "encrypt_queries",
    "prepare_workers",
    "query_capacity",
]
