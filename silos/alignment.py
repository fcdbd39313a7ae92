"""AffineMap: ridge regression z = x W + b from the querier's embedding space into the provider's.

The closed form only needs the sufficient statistics X̃ᵀX̃ and X̃ᵀY of the augmented inputs
X̃ = [X, 1]: the querier computes the first itself and receives the second from the encrypted
protocol, so :meth:`AffineMap.fit` (plaintext) and :meth:`AffineMap.fit_from_stats` (encrypted) share
one solver and give the same map. The intercept is not penalised (the same as centring first).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from silos.saving import load_arrays, save_arrays


def public_parts(n: int, *, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the ``n`` public texts that fit the map, and the held-out rows that score it: a
    seeded permutation, so both silos of a pair cut their embeddings of the same texts alike."""
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"alignment.holdout must lie in [0, 1), got {holdout}")
    order = np.random.default_rng(seed + 1).permutation(n)
    n_val = round(holdout * n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def scale_of(public: np.ndarray) -> float:
    """The fixed scale of a silo's space: its largest |coordinate| on the public texts. Dividing by
    it keeps |x| <= 1 there, which bounds every encrypted sum far below the CKKS modulus."""
    return float(np.abs(public).max()) or 1.0


def augment(X: np.ndarray) -> np.ndarray:
    """X̃ = [X, 1] in float64: the ones column carries the intercept."""
    X = np.asarray(X, dtype=np.float64)
    return np.hstack([X, np.ones((len(X), 1))])


class AffineMap:
    """Ridge least squares with intercept, rectangular (d_in may differ from d_out).

    Parameters
    ----------
    alpha : L2 penalty on ``coef_`` (not on the intercept).

    Fitted attributes: ``coef_`` (d_in × d_out), ``intercept_`` (d_out), ``n_samples_``, and
    ``provenance_``: what the map was fitted from (saved with it; empty unless its owner sets it).
    """

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = alpha
        self.provenance_: dict = {}

    def fit(self, X: np.ndarray, Y: np.ndarray) -> AffineMap:
        X = np.asarray(X, dtype=np.float64)
        Y = np.asarray(Y, dtype=np.float64)
        if X.ndim != 2 or Y.ndim != 2 or len(X) != len(Y):
            raise ValueError(f"X and Y must be 2-d with as many rows, got {X.shape}, {Y.shape}")
        Xa = augment(X)
        return self.fit_from_stats(Xa.T @ Xa, Xa.T @ Y, n_samples=len(X))

    def fit_from_stats(self, xtx: np.ndarray, xty: np.ndarray, *, n_samples: int) -> AffineMap:
        """Fit from X̃ᵀX̃ ((d_in+1)²) and X̃ᵀY ((d_in+1) × d_out), the last row/column the ones."""
        xtx = np.asarray(xtx, dtype=np.float64)
        xty = np.asarray(xty, dtype=np.float64)
        d = xtx.shape[0]
        if xtx.shape != (d, d) or xty.shape[0] != d or d < 2:
            raise ValueError(f"inconsistent statistics: X̃ᵀX̃ {xtx.shape}, X̃ᵀY {xty.shape}")
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        penalty = np.full(d, float(self.alpha))
        penalty[-1] = 0.0
        system = xtx + np.diag(penalty)
        try:  # alpha > 0 makes the system positive definite: a direct solve, ~10x faster than SVD
            if self.alpha == 0:
                raise np.linalg.LinAlgError("plain least squares: minimum-norm solution")
            W = np.linalg.solve(system, xty)
        except np.linalg.LinAlgError:
            W = np.linalg.lstsq(system, xty, rcond=None)[0]
        self.coef_ = W[:-1]
        self.intercept_ = W[-1]
        self.n_samples_ = int(n_samples)
        return self

    def augmented_coef(self) -> np.ndarray:
        """[coef_; intercept_], (d_in+1) × d_out: the map as it multiplies X̃ = [X, 1]."""
        return np.vstack([self.coef_, self.intercept_])

    def transform(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.coef_.shape[0]:
            raise ValueError(f"expected (n, {self.coef_.shape[0]}) inputs, got {X.shape}")
        return X @ self.coef_ + self.intercept_

    def save(self, path: str | Path) -> Path:
        config = {"kind": "AffineMap", "alpha": self.alpha, "n_samples": self.n_samples_,
                  "provenance": self.provenance_}
        return save_arrays(path, config, {"coef": self.coef_, "intercept": self.intercept_})

    @classmethod
    def load(cls, path: str | Path) -> AffineMap:
        config, arrays = load_arrays(path, "AffineMap")
        fitted = cls(alpha=config["alpha"])
        fitted.coef_, fitted.intercept_ = arrays["coef"], arrays["intercept"]
        fitted.n_samples_ = config["n_samples"]
        fitted.provenance_ = config.get("provenance", {})
        return fitted


def fit_quality(
    W: np.ndarray, *, xtx: np.ndarray, xty: np.ndarray, y_sq_sum: float, n_samples: int
) -> float:
    """Held-out R² of the augmented map W ((d_in+1) × d_out) from statistics of the held-out texts.

    SSE = Σ‖x̃W − y‖² = tr(WᵀX̃ᵀX̃W) − 2⟨W, X̃ᵀY⟩ + Σ‖y‖²; SST = Σ‖y‖² − ‖Σy‖²/n, Σy being the
    ones row of X̃ᵀY. Total-variance R² (every output dimension weighted by its variance).
    """
    sse = float(np.sum(W * (xtx @ W)) - 2.0 * np.sum(W * xty) + y_sq_sum)
    y_sum = xty[-1]
    sst = float(y_sq_sum - y_sum @ y_sum / n_samples)
    return 1.0 - sse / sst if sst > 0 else float("nan")
