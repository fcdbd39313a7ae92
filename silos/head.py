"""The provider's private head: multinomial logistic regression on its own embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from silos.saving import load_arrays, save_arrays


class LinearHead:
    """Multinomial logistic regression, ``logits = x coef_ + intercept_``, fitted with L-BFGS.

    Parameters
    ----------
    l2 : penalty ``l2/2 · ‖coef‖²`` added to the mean cross-entropy (the intercept is free).
    max_iter : L-BFGS iterations.

    Fitted attributes: ``coef_`` (d × K), ``intercept_`` (K), ``classes_`` (label names, length K),
    and ``provenance_``: what it was trained from (saved with it; empty unless its owner sets it).
    """

    def __init__(self, l2: float = 1e-3, max_iter: int = 200) -> None:
        self.l2 = l2
        self.max_iter = max_iter
        self.provenance_: dict = {}

    def fit(self, X: np.ndarray, y: np.ndarray, classes: list[str] | None = None) -> LinearHead:
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.int64)
        if X.ndim != 2 or y.shape != (len(X),):
            raise ValueError(f"X must be (n, d) and y (n,), got {X.shape}, {y.shape}")
        if not np.isfinite(X).all():
            raise ValueError("X holds NaN or inf")
        n_classes = int(y.max()) + 1 if classes is None else len(classes)
        if y.min() < 0 or y.max() >= n_classes:
            raise ValueError(f"labels must lie in [0, {n_classes})")
        import torch  # here, not at module level: a deployed silo starts a process per message

        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        coef = torch.zeros(X.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS(
            [coef, bias], max_iter=self.max_iter, line_search_fn="strong_wolfe"
        )

        def closure():
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(Xt @ coef + bias, yt)
            loss = loss + 0.5 * self.l2 * (coef**2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        self.coef_ = coef.detach().numpy()
        self.intercept_ = bias.detach().numpy()
        self.classes_ = list(classes) if classes is not None else [str(k) for k in range(n_classes)]
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Logits, (n, K) float64."""
        return np.asarray(X, dtype=np.float64) @ self.coef_ + self.intercept_

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.decision_function(X).argmax(axis=1)

    def save(self, path: str | Path) -> Path:
        config = {"kind": "LinearHead", "l2": self.l2, "max_iter": self.max_iter,
                  "classes": self.classes_, "provenance": self.provenance_}
        return save_arrays(path, config, {"coef": self.coef_, "intercept": self.intercept_})

    @classmethod
    def load(cls, path: str | Path) -> LinearHead:
        config, arrays = load_arrays(path, "LinearHead")
        head = cls(l2=config["l2"], max_iter=config["max_iter"])
        head.coef_, head.intercept_ = arrays["coef"], arrays["intercept"]
        head.classes_ = config["classes"]
        head.provenance_ = config.get("provenance", {})
        return head
