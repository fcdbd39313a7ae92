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
from silos.ood import OOD_LABEL, SCORES, ood_scores
from simulations.evaluation.stats import auroc_ci, mean_ci
from simulations.report import pair_inputs

SUMMARY_KEYS = ("querier_model", "provider_model", "task", "native_accuracy", "aligned_accuracy",
                "encrypted_accuracy", "agreement")


def silo_name(role: str, model: str) -> str:
    """``q-<model>`` / ``p-<model>``, without dots: a dot would split the OmegaConf key."""
    return f"{role}-{model.replace('.', '')}"


def silo_overrides(models: list[str], pairs: list[tuple[str, str]] | None = None,
                   dtypes: dict[str, str] | None = None) -> list[str]:
    """Replace the default silos by a querier and a provider per model that a pair needs;
    ``pairs`` (querier model, provider model), default every ordered pair of different models;
    ``dtypes``: a model's encoder dtype where it is not the default (bfloat16 for a Qwen)."""
    pairs = pairs or [(a, b) for a in models for b in models if a != b]
    out = [f"silos.{name}=null" for name in load_config().silos]
    for role, chosen in (("q", [q for q, _ in pairs]), ("p", [p for _, p in pairs])):
        for model in dict.fromkeys(chosen):
            name = silo_name(role, model)
            out += [f"silos.{name}.role={'querier' if role == 'q' else 'provider'}",
                    f"silos.{name}.model={model}"]
            if (dtypes or {}).get(model):
                out.append(f"silos.{name}.dtype={dtypes[model]}")
    joined = ",".join(f"{silo_name('q', a)}:{silo_name('p', b)}" for a, b in pairs)
    return [*out, f"pairs=[{joined}]"]


def run_task(corpus: str, ood: str | None, *, models: list[str], n_public: int, n_private: int,
             n_query: int, n_ood: int, seed: int, cache_dir: str, run_dir: Path,
             extra: list[str], holdout_classes: list[str] = (),
             pairs: list[tuple[str, str]] | None = None,
             dtypes: dict[str, str] | None = None) -> tuple[dict, float]:
    """One Flower simulation (``python -m simulations.run_local``): its report and wall seconds."""
    overrides = [
        f"dataset.name={corpus}", f"dataset.holdout_classes=[{','.join(holdout_classes)}]",
        f"dataset.n_public={n_public}", f"dataset.n_private={n_private}",
        f"dataset.n_query={n_query}", f"dataset.n_ood={n_ood if ood else 0}",
        f"dataset.ood={ood if ood else 'null'}", f"run.output_dir={run_dir}",
        f"run.cache_dir={cache_dir}", f"run.seed={seed}", *silo_overrides(models, pairs, dtypes), *extra,
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


def unaligned_accuracy(inputs: dict) -> float:
    """The provider's head on the querier's own embeddings, no map (zero-padded or truncated)."""
    head, truth = inputs["head"], inputs["truth"]
    x, d = inputs["x"], head.coef_.shape[0]
    x = np.pad(x, ((0, 0), (0, max(0, d - x.shape[1]))))[:, :d]
    known = truth >= 0
    return float((head.predict(x)[known] == truth[known]).mean())


def intervals(inputs: dict, seed: int = 0) -> dict:
    """95 % bootstrap intervals of the native and encrypted accuracies (over the labelled
    queries), and of the encrypted and native OOD AUROCs (MSP), from the decrypted logits."""
    truth, known = inputs["truth"], inputs["truth"] != OOD_LABEL
    encrypted = inputs["decrypted"].logits
    native = inputs["head"].decision_function(inputs["native_x"])
    out = {"native_accuracy_ci": mean_ci((native.argmax(1) == truth)[known], seed=seed),
           "encrypted_accuracy_ci": mean_ci((encrypted.argmax(1) == truth)[known], seed=seed)}
    if known.any() and not known.all():
        for kind, logits in (("encrypted", encrypted), ("native", native)):
            msp = ood_scores(np.where(np.isfinite(logits), logits, -1e30))["msp"]
            out[f"ood_auroc_msp_{kind}_ci"] = auroc_ci(msp[known], msp[~known], seed=seed)
    return out


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
        inputs = pair_inputs(report["config"], pair)
        cis = intervals(inputs)
        row.update(
            plaintext_fit_accuracy=pair["plaintext_fit_accuracy"],
            querier_own_accuracy=native.get(pair["querier_model"]),  # its own head, same labels
            unaligned_accuracy=unaligned_accuracy(inputs),
            native_accuracy_ci=cis["native_accuracy_ci"],
            encrypted_accuracy_ci=cis["encrypted_accuracy_ci"],
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
                **({f"auroc_{kind}_ci": cis[f"ood_auroc_msp_{kind}_ci"]
                    for kind in ("native", "encrypted")} if score == "msp" else {}),
            })
    return classification, ood
