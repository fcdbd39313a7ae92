"""Out-of-distribution scores from logits, and how well they separate in- from out-of-distribution.

The querier computes them from the logits it decrypted, so OOD detection costs the provider
nothing and reveals nothing more. Every score is "higher = more in-distribution".
"""

from __future__ import annotations

import numpy as np

OOD_LABEL = -1  # the truth of an out-of-distribution query (no class of the provider's task)
SCORES = ("msp", "energy", "max_logit")


def ood_scores(logits: np.ndarray) -> dict[str, np.ndarray]:
    """Maximum softmax probability, negative energy (log-sum-exp of the logits), maximum logit."""
    logits = np.asarray(logits, dtype=np.float64)
    top = logits.max(axis=1)
    log_sum_exp = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
    return {"msp": np.exp(top - log_sum_exp), "energy": log_sum_exp, "max_logit": top}


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """Probability that an in-distribution score beats an OOD one (ties count half)."""
    inside, outside = np.asarray(inside, np.float64), np.asarray(outside, np.float64)
    if not len(inside) or not len(outside):
        return float("nan")
    outside = np.sort(outside)
    below = np.searchsorted(outside, inside, side="left")
    not_above = np.searchsorted(outside, inside, side="right")
    return float((below + 0.5 * (not_above - below)).sum() / (len(inside) * len(outside)))


def fpr_at_tpr(inside: np.ndarray, outside: np.ndarray, tpr: float = 0.95) -> float:
    """Share of OOD queries accepted at the threshold that keeps ``tpr`` of in-distribution ones."""
    if not len(inside) or not len(outside):
        return float("nan")
    threshold = np.quantile(np.asarray(inside, np.float64), 1.0 - tpr, method="lower")
    return float((np.asarray(outside, np.float64) >= threshold).mean())


def ood_metrics(logits: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """AUROC and FPR at 95 % TPR of every score; OOD queries are those labelled ``OOD_LABEL``."""
    outside = np.asarray(truth) == OOD_LABEL
    metrics = {}
    for name, score in ood_scores(logits).items():
        metrics[f"auroc_{name}"] = auroc(score[~outside], score[outside])
        metrics[f"fpr95_{name}"] = fpr_at_tpr(score[~outside], score[outside])
    return metrics
