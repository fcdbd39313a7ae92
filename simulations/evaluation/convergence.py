"""Experiment 1: do independently trained models converge? CKA, and affine maps as public data grows.

For every ordered pair of models, on the same texts: linear CKA of the fit texts, and three maps
from A's space into B's fitted on growing public sets and scored on a fixed test set — ridge and
plain least squares (``silos.alignment.AffineMap``, the protocol's map) and orthogonal Procrustes
(a rotation plus a global scale; the smaller space zero-padded to the larger dimension).
"""

from __future__ import annotations

import numpy as np

from silos.alignment import AffineMap


def linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Linear centred kernel alignment (Kornblith et al., 2019): 1 = same geometry up to rotation."""
    X = np.asarray(X, np.float64) - np.mean(X, axis=0)
    Y = np.asarray(Y, np.float64) - np.mean(Y, axis=0)
    cross = np.linalg.norm(Y.T @ X) ** 2
    return float(cross / (np.linalg.norm(X.T @ X) * np.linalg.norm(Y.T @ Y)))


class ProcrustesMap:
    """Orthogonal Procrustes with a global scale, ``z = s (x - μx) R + μy``, zero-padded dims.

    Fitted attributes: ``rotation_`` (D × D, D = max(d_in, d_out)), ``scale_``, ``x_mean_``,
    ``y_mean_``.
    """

    def fit(self, X: np.ndarray, Y: np.ndarray) -> ProcrustesMap:
        X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
        self.x_mean_, self.y_mean_ = X.mean(axis=0), Y.mean(axis=0)
        self.dim_ = max(X.shape[1], Y.shape[1])
        Xc, Yc = self._pad(X - self.x_mean_), self._pad(Y - self.y_mean_)
        U, S, Vt = np.linalg.svd(Xc.T @ Yc)
        self.rotation_ = U @ Vt
        self.scale_ = float(S.sum() / max(np.sum(Xc**2), 1e-300))
        return self

    def _pad(self, A: np.ndarray) -> np.ndarray:
        return np.pad(A, ((0, 0), (0, self.dim_ - A.shape[1])))

    def transform(self, X: np.ndarray) -> np.ndarray:
        Z = self.scale_ * self._pad(np.asarray(X, np.float64) - self.x_mean_) @ self.rotation_
        return Z[:, : len(self.y_mean_)] + self.y_mean_


def select_ridge(X: np.ndarray, Y: np.ndarray, alphas: list[float], seed: int) -> AffineMap:
    """Ridge with its alpha picked on a held-out fifth of the fit texts, then refit on all —
    as the protocol picks it (every space has its own scale, so no alpha suits all pairs)."""
    order = np.random.default_rng(seed).permutation(len(X))
    val, fit = order[: max(1, len(X) // 5)], order[max(1, len(X) // 5):]
    best = max(alphas, key=lambda a: scores(AffineMap(a).fit(X[fit], Y[fit]).transform(X[val]),
                                            Y[val])["r2"])
    return AffineMap(alpha=best).fit(X, Y)


def fit_map(method: str, X: np.ndarray, Y: np.ndarray, ridge_alphas: list[float], seed: int = 0):
    if method == "ridge":
        return select_ridge(X, Y, ridge_alphas, seed)
    if method == "lstsq":
        return AffineMap(alpha=0.0).fit(X, Y)  # minimum-norm solution when n < d
    if method == "procrustes":
        return ProcrustesMap().fit(X, Y)
    raise ValueError(f"unknown map method {method!r}; expected ridge, lstsq or procrustes")


def scores(predicted: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Held-out R² (total variance), mean cosine, and top-1 retrieval among the test texts."""
    target = np.asarray(target, np.float64)
    r2 = 1 - np.sum((predicted - target) ** 2) / np.sum((target - target.mean(axis=0)) ** 2)
    p = predicted / np.maximum(np.linalg.norm(predicted, axis=1, keepdims=True), 1e-12)
    t = target / np.maximum(np.linalg.norm(target, axis=1, keepdims=True), 1e-12)
    similarity = p @ t.T
    return {"r2": float(r2), "cosine": float(np.mean(np.diag(similarity))),
            "top1_retrieval": float(np.mean(similarity.argmax(axis=1) == np.arange(len(t))))}


def usable_sizes(sizes: list[int], available: int) -> list[int]:
    """The configured sizes that fit, ending with all available texts if a size did not fit."""
    kept = [s for s in sizes if s <= available]
    return [*kept, available] if len(kept) < len(sizes) and available not in kept else kept


def convergence_rows(embeddings: dict[str, np.ndarray], *, sizes: list[int], n_test: int,
                     methods: list[str], ridge_alphas: list[float], seed: int) -> list[dict]:
    """Every ordered pair × size × method. ``embeddings[model]`` holds the same texts, row by row."""
    models = list(embeddings)
    n = len(next(iter(embeddings.values())))
    if n_test >= n:
        raise ValueError(f"n_test={n_test} leaves no fit texts out of {n}")
    order = np.random.default_rng(seed).permutation(n)
    test, pool = order[:n_test], order[n_test:]
    # The silos' scaling: |x| <= 1 on the fit data.
    scaled = {m: e / np.abs(e[pool]).max() for m, e in embeddings.items()}
    rows = []
    for a in models:
        for b in models:
            if a == b:
                continue
            for size in usable_sizes(sizes, len(pool)):
                fit = pool[:size]
                cka = linear_cka(scaled[a][fit], scaled[b][fit])
                for method in methods:
                    mapping = fit_map(method, scaled[a][fit], scaled[b][fit], ridge_alphas, seed)
                    rows.append({"model_a": a, "model_b": b, "n_public": size, "method": method,
                                 "cka": cka, "alpha": getattr(mapping, "alpha", None),
                                 **scores(mapping.transform(scaled[a][test]), scaled[b][test])})
    return rows
