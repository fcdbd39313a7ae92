"""Encrypted sufficient statistics of the alignment fit: Enc(X̃)ᵀ Y without rotations.

The querier encrypts each public text's augmented embedding x̃ (features + a ones column), the chunk
replicated ``reps`` times across the slots. The provider multiplies every ciphertext by a plaintext
whose ``reps`` blocks hold ``reps`` different entries of its own embedding y, and sums over texts:
block b of output ciphertext g then holds column ``g·reps + b`` of X̃ᵀY. The sum over texts runs across
ciphertexts, so no rotation (and no Galois key) is needed, and the querier decrypts exactly X̃ᵀY —
no per-text partial sums. One ciphertext-plaintext multiply yields ``reps`` output columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tenseal as ts
from tqdm.auto import tqdm


@dataclass(frozen=True)
class CrossProductPacking:
    """Slot layout of Enc(X̃)ᵀY for ``d_in`` querier columns in ciphertexts of ``slots`` slots."""

    d_in: int
    slots: int

    def __post_init__(self) -> None:
        if self.d_in < 1 or self.slots < 1:
            raise ValueError(f"d_in and slots must be positive, got {self.d_in}, {self.slots}")

    @property
    def chunk(self) -> int:
        """Querier columns per ciphertext (all of them unless d_in exceeds the slots)."""
        return min(self.d_in, self.slots)

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.d_in / self.chunk)

    @property
    def reps(self) -> int:
        """Copies of a chunk per ciphertext = output columns per multiply."""
        return self.slots // self.chunk

    def n_groups(self, d_out: int) -> int:
        return math.ceil(d_out / self.reps)

    def _padded(self, X: np.ndarray) -> np.ndarray:
        pad = self.n_chunks * self.chunk - self.d_in
        return np.pad(X, ((0, 0), (0, pad))) if pad else X

    # -- querier ----------------------------------------------------------------------------------
    def encrypt_rows(self, context: ts.Context, X: np.ndarray) -> list[ts.CKKSVector]:
        """Encrypt the rows of X (n × d_in), chunk by chunk, each chunk tiled ``reps`` times."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.d_in:
            raise ValueError(f"expected rows of {self.d_in} values, got shape {X.shape}")
        chunks = self._padded(X).reshape(len(X), self.n_chunks, self.chunk)
        return [
            ts.ckks_vector(context, np.tile(chunk, self.reps).tolist())
            for row in chunks
            for chunk in row
        ]

    def decrypt(self, vectors: list[ts.CKKSVector], d_out: int) -> np.ndarray:
        """Decrypt the provider's reply into X̃ᵀY (d_in × d_out), float64."""
        groups = self.n_groups(d_out)
        if len(vectors) != self.n_chunks * groups:
            raise ValueError(
                f"expected {self.n_chunks * groups} product ciphertexts, got {len(vectors)}"
            )
        out = np.zeros((self.n_chunks * self.chunk, groups * self.reps))
        for index, vector in enumerate(vectors):
            c, g = divmod(index, groups)
            blocks = np.asarray(vector.decrypt()[: self.reps * self.chunk]).reshape(self.reps, -1)
            out[c * self.chunk : (c + 1) * self.chunk, g * self.reps : (g + 1) * self.reps] = blocks.T
        return out[: self.d_in, :d_out]

    # -- provider ---------------------------------------------------------------------------------
    def multiply(
        self, rows: list[ts.CKKSVector], Y: np.ndarray, *, progress: bool = False
    ) -> list[ts.CKKSVector]:
        """Enc(X̃)ᵀY from the querier's encrypted rows and the provider's plaintext Y (n × d_out).

        Products are accumulated at scale², without rescaling: one rescale fewer per multiply, and
        the querier decrypts at the accumulated scale. The rows' context must allow that (it is the
        provider's copy of the public context; ``auto_rescale`` is switched off on it here).
        """
        Y = np.asarray(Y, dtype=np.float64)
        n, d_out = Y.shape
        if len(rows) != n * self.n_chunks:
            raise ValueError(
                f"{len(rows)} ciphertexts do not match {n} texts × {self.n_chunks} chunks"
            )
        if not np.isfinite(Y).all():
            raise ValueError("Y holds NaN or inf")
        if rows:
            rows[0].context().auto_rescale = False
        groups = self.n_groups(d_out)
        Ypad = np.pad(Y, ((0, 0), (0, groups * self.reps - d_out)))
        acc: list[ts.CKKSVector | None] = [None] * (self.n_chunks * groups)
        for i in tqdm(range(n), desc="Enc(X)ᵀY", unit="text", disable=not progress,
                      mininterval=2.0):
            for g in range(groups):
                # block b of the plaintext repeats y[g·reps + b] over one chunk.
                plain = np.repeat(Ypad[i, g * self.reps : (g + 1) * self.reps], self.chunk).tolist()
                for c in range(self.n_chunks):
                    k = c * groups + g
                    product = rows[i * self.n_chunks + c] * plain
                    acc[k] = product if acc[k] is None else acc[k].add_(product)
        return [a for a in acc if a is not None]
