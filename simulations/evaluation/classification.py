"""Experiments 2 and 3: classification and OOD detection through the product, one simulation per task.

Every model is both a querier silo (``q-<model>``) and a provider silo (``p-<model>``); every ordered
pair of different models is run by the product's own strategy: encrypted fit on the task's public
texts, encrypted serving of the querier's queries and of OOD texts from the other corpus. The
simulation's referee (``simulations/report.py``) adds the float64 references; this module adds the
two baselines and flattens the results.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from conf import load_config
from silos.ood import SCORES
from simulations.report import pair_inputs

SUMMARY_KEYS = ("querier_model", "provider_model", "task", "native_accuracy", "aligned_accuracy",
                "encrypted_accuracy", "agreement")


def silo_overrides(models: list[str]) -> list[str]:
    """Replace the default silos by a querier and a provider per model; pairs of different models."""
    out = [f"silos.{name}=null" for name in load_config().silos]
    for model in models:
        out += [f"silos.q-{model}.role=querier", f"silos.q-{model}.model={model}",
                f"silos.p-{model}.role=provider", f"silos.p-{model}.model={model}"]
    pairs = [f"q-{a}:p-{b}" for a in models for b in models if a != b]
    return [*out, f"pairs=[{','.join(pairs)}]"]


def run_task(corpus: str, ood: str | None, *, models: list[str], n_public: int, n_private: int,
             n_query: int, n_ood: int, seed: int, cache_dir: str, run_dir: Path,
             extra: list[str], holdout_classes: list[str] = ()) -> tuple[dict, float]:
    """One Flower simulation (``python -m simulations.run_local``): its report and wall seconds."""
    overrides = [
        f"dataset.name={corpus}", f"dataset.holdout_classes=[{','.join(holdout_classes)}]",
        f"dataset.n_public={n_public}", f"dataset.n_private={n_private}",
        f"dataset.n_query={n_query}", f"dataset.n_ood={n_ood if ood else 0}",
        f"dataset.ood={ood if ood else 'null'}", f"run.output_dir={run_dir}",
        f"run.cache_dir={cache_dir}", f"run.seed={seed}", *silo_overrides(models), *extra,
    ]
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with (run_dir / "simulation.log").open("w") as log:
        print(f"  python -m simulations.run_local {' '.join(overrides)}", flush=True)
        subprocess.run([sys.executable, "-m", "simulations.run_local", *overrides], stdout=log,
                       stderr=subprocess.STDOUT, env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"},
                       check=False)  # a failed pair still writes its report; it is read below
    report_file = run_dir / "report.json"
    if not report_file.exists():
        raise RuntimeError(f"the {corpus} simulation wrote no report; see "
                           f"{run_dir / 'simulation.log'}")
    return json.loads(report_file.read_text()), time.perf_counter() - started


def unaligned_accuracy(cfg: dict, pair: dict) -> float:
    """The provider's head on the querier's own embeddings, no map (zero-padded or truncated)."""
    inputs = pair_inputs(cfg, pair)
    head, truth = inputs["head"], inputs["truth"]
    x, d = inputs["x"], head.coef_.shape[0]
    x = np.pad(x, ((0, 0), (0, max(0, d - x.shape[1]))))[:, :d]
    known = truth >= 0
    return float((head.predict(x)[known] == truth[known]).mean())


def rows(report: dict, run_dir: Path, task: str) -> tuple[list[dict], list[dict]]:
    """Classification rows (with baselines) and OOD rows of one task's report."""
    native = {p["provider_model"]: p.get("native_accuracy") for p in report["pairs"]}
    classification, ood = [], []
    for pair in report["pairs"]:
        row = {"task": task, "querier_model": pair["querier_model"],
               "provider_model": pair["provider_model"], "status": pair.get("status")}
        if pair.get("status") != "ok":
            classification.append({**row, "error": pair.get("error")})
            continue
        row.update({k: pair.get(k) for k in SUMMARY_KEYS if k not in row})
        row.update(
            plaintext_fit_accuracy=pair["plaintext_fit_accuracy"],
            querier_own_accuracy=native.get(pair["querier_model"]),  # its own head, same labels
            unaligned_accuracy=unaligned_accuracy(report["config"], pair),
            max_abs_error=pair["max_abs_error"], map_relative_error=pair["map_relative_error"],
            r2=pair["r2"], cosine=pair["cosine"], alpha=pair["alpha"],
            latency_ms_per_query=pair["latency_ms_per_query"],
            wall_ms_per_query=pair["wall_ms_per_query"], bytes_per_query=pair["bytes_per_query"],
            align_seconds=pair["seconds"].get("align"), n_queries=pair["n_queries"],
        )
        classification.append(row)
        for score in SCORES if pair.get("n_ood") else ():
            ood.append({
                "task": task, "querier_model": pair["querier_model"],
                "provider_model": pair["provider_model"], "score": score,
                **{f"{metric}_{kind}": pair[f"ood_{metric}_{score}_{kind}"]
                   for metric in ("auroc", "fpr95") for kind in ("native", "aligned", "encrypted")},
            })
    return classification, ood
