"""The scale curve: does convergence grow with model size? CKA, held-out R² and top-1 retrieval
between every pair of the six models, against their parameter counts, with the random-pairing
control beside each (the same fit with the rows shuffled: what chance looks like here).

Embeddings come from the Table 2 experiment's pool (the same texts, the same cache). Parameter
counts are read from the converted checkpoints' safetensors headers (no weights loaded).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from silos.registry import resolve_model
from simulations.evaluation.convergence import linear_cka, select_ridge
from simulations.evaluation.domain import top1_retrieval
from simulations.evaluation.stats import mean_ci


def parameter_count(model: str, cache_dir: Path) -> int:
    """Parameters of the network that embeds (the LM head left out: the GGUF conversions store
    Qwen's tied head as a second 136M / 233M-parameter copy), from the safetensors headers."""
    folder = Path(resolve_model(model, cache_dir=cache_dir).path)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors checkpoint in {folder}")
    total = 0
    for file in files:
        with file.open("rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        total += sum(int(np.prod(t["shape"])) for k, t in header.items()
                     if k != "__metadata__" and not k.startswith("lm_head."))
    return total


def scale_rows(embeddings: dict[str, np.ndarray], params: dict[str, int], *, n_test: int,
               alphas: list[float], seed: int) -> list[dict]:
    """Every ordered pair: CKA on the fit texts; ridge (alpha picked on a fifth of them) R² and
    top-1 retrieval among the ``n_test`` held-out texts, each with a 95 % interval; and the same
    with the fit rows shuffled (the control)."""
    models = list(embeddings)
    n = len(next(iter(embeddings.values())))
    order = np.random.default_rng(seed).permutation(n)
    test, fit = order[:n_test], order[n_test:]
    scaled = {m: e / np.abs(e[fit]).max() for m, e in embeddings.items()}
    shuffled_fit = fit[np.random.default_rng(seed + 7).permutation(len(fit))]
    rows = []
    for a in models:
        for b in models:
            if a == b:
                continue
            row = {"model_a": a, "model_b": b, "params_a": params[a], "params_b": params[b],
                   "n_fit": len(fit), "n_test": len(test),
                   "cka": linear_cka(scaled[a][fit], scaled[b][fit]),
                   "cka_control": linear_cka(scaled[a][shuffled_fit], scaled[b][fit])}
            for suffix, rows_a in (("", fit), ("_control", shuffled_fit)):
                mapping = select_ridge(scaled[a][rows_a], scaled[b][fit], alphas, seed)
                predicted = mapping.transform(scaled[a][test])
                target = scaled[b][test].astype(np.float64)
                per_text_sse = np.sum((predicted - target) ** 2, axis=1)
                sst = np.sum((target - target.mean(axis=0)) ** 2)
                retrieved = top1_retrieval(predicted, target)
                row[f"r2{suffix}"] = float(1 - per_text_sse.sum() / sst)
                row[f"retrieval{suffix}"] = float(retrieved.mean())
                row[f"retrieval{suffix}_ci"] = mean_ci(retrieved, seed=seed)
                if not suffix:  # R² = 1 - mean(sse)/mean(sst): resample the texts' errors
                    lo, hi = mean_ci(per_text_sse / (sst / len(test)), seed=seed)
                    row["r2_ci"] = (1 - hi, 1 - lo)
            row["chance_retrieval"] = 1.0 / len(test)
            rows.append(row)
    return rows
