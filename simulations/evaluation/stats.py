"""95 % bootstrap intervals for the suite's figures: an accuracy of 150 queries moves in steps of
0.0067 and is uncertain by about ±0.04, so a difference between two rows means nothing without one.

Percentile bootstrap over the queries (or positions, texts), seeded: the same inputs always give
the same interval. AUROC resamples the in-distribution and the OOD scores separately (a stratified
bootstrap: both groups keep their size, as in the experiment).
"""

from __future__ import annotations

import numpy as np

from silos.ood import auroc

N_BOOT = 1000


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def mean_ci(hits: np.ndarray, *, level: float = 0.95, n_boot: int = N_BOOT,
            seed: int = 0) -> tuple[float, float]:
    """Interval of the mean of ``hits`` (booleans or numbers: accuracy, agreement, a ratio's
    numerator); (nan, nan) for no values."""
    hits = np.asarray(hits, dtype=np.float64).ravel()
    if not len(hits):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    # Counts per row from a multinomial: the mean of each resample without an (n_boot, n) index.
    counts = rng.multinomial(len(hits), np.full(len(hits), 1 / len(hits)), size=n_boot)
    return _percentiles(counts @ hits / len(hits), level)


def ratio_ci(numerator: np.ndarray, denominator: np.ndarray, *, level: float = 0.95,
             n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float]:
    """Interval of mean(numerator) / mean(denominator) over the same resampled rows (aligned
    accuracy ÷ native accuracy on the same queries: the two are correlated, so resample pairs)."""
    a = np.asarray(numerator, dtype=np.float64).ravel()
    b = np.asarray(denominator, dtype=np.float64).ravel()
    if len(a) != len(b) or not len(a):
        raise ValueError(f"need as many numerators as denominators, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(a), np.full(len(a), 1 / len(a)), size=n_boot)
    num, den = counts @ a, counts @ b
    if not (den > 0).any():
        return float("nan"), float("nan")
    return _percentiles(num[den > 0] / den[den > 0], level)  # resamples with no native hit: none


def auroc_ci(inside: np.ndarray, outside: np.ndarray, *, level: float = 0.95,
             n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float]:
    """Interval of AUROC(inside > outside), each group resampled on its own."""
    inside, outside = np.asarray(inside, np.float64), np.asarray(outside, np.float64)
    if not len(inside) or not len(outside):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = [auroc(inside[rng.integers(0, len(inside), len(inside))],
                    outside[rng.integers(0, len(outside), len(outside))]) for _ in range(n_boot)]
    return _percentiles(np.asarray(values), level)


def cluster_mean_ci(hits_per_group: list[np.ndarray], *, level: float = 0.95,
                    n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float]:
    """Interval of the pooled mean when rows come in correlated groups (token positions of one
    text): whole groups are resampled, so a long text's positions do not pass for independent."""
    groups = [np.asarray(g, np.float64).ravel() for g in hits_per_group if len(g)]
    if not groups:
        return float("nan"), float("nan")
    sums = np.asarray([g.sum() for g in groups])
    sizes = np.asarray([len(g) for g in groups], dtype=np.float64)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(groups), np.full(len(groups), 1 / len(groups)), size=n_boot)
    return _percentiles(counts @ sums / (counts @ sizes), level)


def fmt_ci(value: float | None, ci: tuple[float, float] | list[float] | None,
           digits: int = 3) -> str:
    """``0.912 [0.887, 0.934]``; a dash for a missing value."""
    if value is None or not np.isfinite(value):
        return "—"
    if ci is None or not all(np.isfinite(ci)):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
