"""The querier's output policy: which of the decrypted logits it keeps (top-k, rounded).

The provider computes on ciphertexts and cannot compare or round them (CKKS is linear), so these
run at the querier, after decryption. They protect whoever consumes the querier's results (a
downstream service gets fewer, coarser numbers about the provider's head); they do NOT protect the
provider against a malicious querier, which decrypts every logit before any policy applies. What
the provider itself can enforce is its own policy's query budget and noise (silos/policy.py).
"""

from __future__ import annotations

import numpy as np


class OutputPolicy:
    """Keep the ``top_k`` largest logits per query (others become -inf; 0: keep all) and round
    the kept ones to ``decimals`` (None: no rounding)."""

    def __init__(self, top_k: int = 0, decimals: int | None = None) -> None:
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: every logit), got {top_k}")
        self.top_k = top_k
        self.decimals = decimals

    @property
    def active(self) -> bool:
        return self.top_k > 0 or self.decimals is not None

    def apply(self, logits: np.ndarray) -> np.ndarray:
        out = np.array(logits, dtype=np.float64)
        if self.decimals is not None:
            out = np.round(out, self.decimals)
        if 0 < self.top_k < out.shape[1]:
            # Rank on the unrounded logits: rounding must not change which classes are kept.
            drop = np.argsort(-np.asarray(logits), axis=1, kind="stable")[:, self.top_k:]
            np.put_along_axis(out, drop, -np.inf, axis=1)
        return out
