"""A provider's linear head on encrypted inputs: Enc(z) ↦ Enc(z V + c), plaintext weights only.

Two packings, picked by batch size:
- ``batched`` (feature-major): ciphertext j holds feature j of up to N/2 queries; logit k is
  Σ_j V[j,k]·ct_j + c[k]: scalar multiplies and adds only, no rotation, so no Galois keys.
- ``single``: one ciphertext holds one query; logit k is ``dot(z, V[:,k]) + c[k]`` (TenSEAL's
  rotate-and-sum, needs Galois keys). Never TenSEAL's ``matmul``: its cost grows with the input
  dimension by ~d rotations (DESIGN.md).
"""

from __future__ import annotations

import numpy as np
import tenseal as ts

from crypto.context import context_slots

PATHS = ("batched", "single")


def encrypt_queries(context: ts.Context, Z: np.ndarray, *, path: str) -> list[ts.CKKSVector]:
    """Querier side: encrypt aligned vectors Z (n × d) in the path's packing."""
    Z = np.asarray(Z, dtype=np.float64)
    if Z.ndim != 2 or len(Z) == 0:
        raise ValueError(f"expected a non-empty (n, d) array, got shape {Z.shape}")
    if not np.isfinite(Z).all():
        raise ValueError("aligned vectors hold NaN or inf")
    if path == "batched":
        slots = context_slots(context)
        if len(Z) > slots:
            raise ValueError(f"a batch holds at most {slots} queries, got {len(Z)}")
        return [ts.ckks_vector(context, column.tolist()) for column in Z.T]
    if path == "single":
        return [ts.ckks_vector(context, row.tolist()) for row in Z]
    raise ValueError(f"unknown path {path!r}; expected one of {PATHS}")


def decrypt_logits(vectors: list[ts.CKKSVector], *, path: str, n: int, n_classes: int) -> np.ndarray:
    """Querier side: decrypt the provider's reply into an (n, K) float64 array of logits."""
    if path == "batched":
        if len(vectors) != n_classes:
            raise ValueError(f"expected {n_classes} logit ciphertexts, got {len(vectors)}")
        return np.stack([np.asarray(v.decrypt()[:n]) for v in vectors], axis=1)
    if path == "single":
        if len(vectors) != n * n_classes:
            raise ValueError(f"expected {n * n_classes} logit ciphertexts, got {len(vectors)}")
        return np.asarray([v.decrypt()[0] for v in vectors]).reshape(n, n_classes)
    raise ValueError(f"unknown path {path!r}; expected one of {PATHS}")


class EncryptedLinearHead:
    """Evaluate ``z V + c`` on ciphertexts; V (d × K) and c (K) stay in the provider's plaintext."""

    def __init__(self, coef: np.ndarray, intercept: np.ndarray) -> None:
        self.coef = np.asarray(coef, dtype=np.float64)
        self.intercept = np.asarray(intercept, dtype=np.float64)
        if self.coef.ndim != 2 or self.intercept.shape != (self.coef.shape[1],):
            raise ValueError(
                f"coef must be (d, K) and intercept (K,), got {self.coef.shape}, "
                f"{self.intercept.shape}"
            )

    @property
    def n_features(self) -> int:
        return self.coef.shape[0]

    @property
    def n_classes(self) -> int:
        return self.coef.shape[1]

    def evaluate(self, vectors: list[ts.CKKSVector], *, path: str) -> list[ts.CKKSVector]:
        if path == "batched":
            return self.evaluate_batched(vectors)
        if path == "single":
            return [logit for v in vectors for logit in self.evaluate_single(v)]
        raise ValueError(f"unknown path {path!r}; expected one of {PATHS}")

    def evaluate_batched(self, features: list[ts.CKKSVector]) -> list[ts.CKKSVector]:
        """K logit ciphertexts from d feature-major ciphertexts (slot i = query i)."""
        if len(features) != self.n_features:
            raise ValueError(
                f"expected {self.n_features} feature ciphertexts, got {len(features)}"
            )
        logits = []
        for k in range(self.n_classes):
            acc = None
            for j, ct in enumerate(features):
                term = ct * float(self.coef[j, k])
                acc = term if acc is None else acc.add_(term)
            logits.append(acc.add_(float(self.intercept[k])))
        return logits

    def evaluate_single(self, vector: ts.CKKSVector) -> list[ts.CKKSVector]:
        """K one-slot logit ciphertexts for one query (needs Galois keys in the context)."""
        if vector.size() != self.n_features:
            raise ValueError(f"expected a {self.n_features}-d ciphertext, got {vector.size()}")
        if not vector.context().has_galois_keys():
            raise ValueError("the single-query path needs a context with Galois keys")
        return [
            vector.dot(self.coef[:, k].tolist()).add_(float(self.intercept[k]))
            for k in range(self.n_classes)
        ]
