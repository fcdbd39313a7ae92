"""The suite's figures (PNG), one function per experiment; each names the command that made it."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import NullFormatter


def _finish(fig, path: Path, command: str) -> Path:
    fig.text(0.01, 0.005, command, fontsize=7, color="0.4")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def convergence_figure(rows: list[dict], path: Path, command: str) -> Path:
    """R², cosine and retrieval against the public set's size: one line per pair, ridge; and the
    three methods averaged over pairs."""
    metrics = ("r2", "cosine", "top1_retrieval")
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2))
    pairs = sorted({(r["model_a"], r["model_b"]) for r in rows})
    for ax, metric in zip(axes[:3], metrics, strict=True):
        for a, b in pairs:
            mine = sorted((r["n_public"], r[metric]) for r in rows
                          if (r["model_a"], r["model_b"]) == (a, b) and r["method"] == "ridge")
            ax.plot(*zip(*mine, strict=True), marker="o", ms=3, label=f"{a} → {b}")
        ax.set(xscale="log", xlabel="public texts (fit)", title=f"{metric} (ridge, held-out)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    for method in sorted({r["method"] for r in rows}):
        sizes = sorted({r["n_public"] for r in rows})
        mean = [sum(r["top1_retrieval"] for r in rows if r["method"] == method
                    and r["n_public"] == n) / max(1, sum(1 for r in rows if r["method"] == method
                                                         and r["n_public"] == n)) for n in sizes]
        axes[3].plot(sizes, mean, marker="o", label=method)
    axes[3].set(xscale="log", xlabel="public texts (fit)", title="top-1 retrieval, mean over pairs")
    axes[3].legend()
    axes[3].grid(alpha=0.3)
    return _finish(fig, path, command)


def classification_figure(rows: list[dict], path: Path, command: str) -> Path:
    """Accuracy per pair and task: native, own head, aligned, encrypted, unaligned."""
    tasks = sorted({r["task"] for r in rows})
    fig, axes = plt.subplots(1, len(tasks), figsize=(7 * len(tasks), 4.5), squeeze=False)
    kinds = [("native_accuracy", "provider native"), ("querier_own_accuracy", "querier's own head"),
             ("aligned_accuracy", "aligned (float64)"), ("encrypted_accuracy", "encrypted"),
             ("unaligned_accuracy", "unaligned")]
    for ax, task in zip(axes[0], tasks, strict=True):
        mine = [r for r in rows if r["task"] == task and r.get("status") == "ok"]
        width = 0.8 / len(kinds)
        for i, (key, label) in enumerate(kinds):  # None (no such head in the run): no bar
            ax.bar([j + i * width for j in range(len(mine))],
                   [np.nan if r.get(key) is None else r[key] for r in mine], width, label=label)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(mine))])
        ax.set_xticklabels([f"{r['querier_model']}\n→ {r['provider_model']}" for r in mine],
                           fontsize=6, rotation=45, ha="right")
        ax.set(ylim=(0, 1), ylabel="accuracy", title=task)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return _finish(fig, path, command)


def ood_figure(rows: list[dict], path: Path, command: str) -> Path:
    """OOD AUROC per pair: native vs aligned vs encrypted, for each score."""
    scores = sorted({r["score"] for r in rows})
    tasks = sorted({r["task"] for r in rows})
    fig, axes = plt.subplots(len(tasks), len(scores), figsize=(5 * len(scores), 4 * len(tasks)),
                             squeeze=False)
    for row_axes, task in zip(axes, tasks, strict=True):
        for ax, score in zip(row_axes, scores, strict=True):
            mine = [r for r in rows if r["task"] == task and r["score"] == score]
            for i, kind in enumerate(("native", "aligned", "encrypted")):
                ax.bar([j + i * 0.27 for j in range(len(mine))], [r[f"auroc_{kind}"] for r in mine],
                       0.27, label=kind)
            ax.set_xticks([j + 0.27 for j in range(len(mine))])
            ax.set_xticklabels([f"{r['querier_model']}→{r['provider_model']}" for r in mine],
                               fontsize=6, rotation=45, ha="right")
            ax.set(ylim=(0, 1), title=f"{task}: AUROC ({score})")
            ax.axhline(0.5, color="0.5", lw=0.8, ls="--")
    axes[0][0].legend(fontsize=7)
    return _finish(fig, path, command)


def tradeoff_figure(rows: list[dict], path: Path, command: str) -> Path:
    """Latency against security level; the Pareto-optimal configurations ringed."""
    dims = sorted({r["d"] for r in rows})
    fig, axes = plt.subplots(1, len(dims), figsize=(7 * len(dims), 4.5), squeeze=False)
    markers = {"plaintext": "s", "clear": "D", "single": "o", "batched": "^"}
    for ax, d in zip(axes[0], dims, strict=True):
        for row in (r for r in rows if r["d"] == d):
            label = row["path"] + (f" N={row['N']} 2^{row['input_scale_bits']}"
                                   if "N" in row else "")
            ax.scatter(row["latency_ms_per_query"], row["security_bits"], marker=markers[row["path"]],
                       s=60, edgecolors="red" if row["pareto"] else "none", linewidths=1.5,
                       label=label)
            ax.annotate(f"{row['max_abs_error']:.0e}" if row["max_abs_error"] else "",
                        (row["latency_ms_per_query"], row["security_bits"]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
        ax.set(xscale="log", xlabel="ms per query (batched: amortised)", ylabel="security bits",
               title=f"d={d}: latency vs security (red ring: Pareto front; label: max |err|)")
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    return _finish(fig, path, command)


def _err(values: list[float], cis: list) -> list[list[float]]:
    """Matplotlib's asymmetric error bars from values and (low, high) intervals."""
    return [[max(0.0, v - c[0]) for v, c in zip(values, cis, strict=True)],
            [max(0.0, c[1] - v) for v, c in zip(values, cis, strict=True)]]


def domain_figure(summary: list[dict], path: Path, command: str) -> Path:
    """Table 2: aligned ÷ native accuracy and OOD AUROC per condition, per task (mean over pairs,
    bars from the lowest to the highest pair)."""
    tasks = list(dict.fromkeys(r["task"] for r in summary))
    fig, axes = plt.subplots(2, len(tasks), figsize=(6.5 * len(tasks), 7.5), squeeze=False)
    for j, task in enumerate(tasks):
        mine = [r for r in summary if r["task"] == task]
        names = [r["condition"] for r in mine]
        for i, (key, label) in enumerate((("ratio", "aligned ÷ native accuracy"),
                                          ("auroc_aligned", "OOD AUROC (MSP), aligned"))):
            ax = axes[i][j]
            values = [r.get(key, float("nan")) for r in mine]
            spans = [(r.get(f"{key}_min", v), r.get(f"{key}_max", v)) for r, v in zip(mine, values,
                                                                                   strict=True)]
            ax.bar(range(len(mine)), values, yerr=_err(values, spans), capsize=3,
                   color=["0.55" if n.startswith("control") else "C0" if n == "in-domain"
                          else "C1" for n in names])
            ax.set_xticks(range(len(mine)))
            ax.set_xticklabels(names, rotation=35, ha="right", fontsize=7)
            ax.set(ylim=(0, 1.1), title=f"{task}: {label}")
            ax.axhline(1.0 if key == "ratio" else 0.5, color="0.4", lw=0.8, ls="--")
            ax.grid(axis="y", alpha=0.3)
    return _finish(fig, path, command)


def control_figure(rows: list[dict], path: Path, command: str) -> Path:
    """The random-pairing control against the in-domain fit, per pair: R², retrieval, accuracy."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    metrics = (("r2", "held-out R²"), ("retrieval", "top-1 retrieval (queries)"),
               ("aligned_accuracy", "aligned accuracy"))
    fig, axes = plt.subplots(len(tasks), 3, figsize=(15, 3.8 * len(tasks)), squeeze=False)
    for i, task in enumerate(tasks):
        for j, (key, label) in enumerate(metrics):
            ax = axes[i][j]
            for cond, color in (("in-domain", "C0"), ("control:shuffled", "0.5")):
                mine = [r for r in rows if r["task"] == task and r["condition"] == cond]
                ax.plot(range(len(mine)), [r[key] for r in mine], "o", color=color, ms=4,
                        label=cond)
            base = [r for r in rows if r["task"] == task and r["condition"] == "in-domain"]
            chance = {"retrieval": base[0]["chance_retrieval"],
                      "aligned_accuracy": base[0]["majority_accuracy"], "r2": 0.0}[key]
            ax.axhline(chance, color="red", lw=0.8, ls="--", label="chance")
            ax.set(title=f"{task}: {label}", xlabel="pair (querier → provider)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return _finish(fig, path, command)


def scale_figure(rows: list[dict], params: dict[str, int], path: Path, command: str) -> Path:
    """CKA, R² and retrieval of each pair against the smaller model's parameter count, and the
    shuffled-pairs control."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for ax, key, label in zip(axes, ("cka", "r2", "retrieval"),
                              ("linear CKA", "held-out R² (ridge)", "top-1 retrieval"),
                              strict=True):
        xs = [min(r["params_a"], r["params_b"]) for r in rows]
        ax.scatter(xs, [r[key] for r in rows], s=18, label="pairs")
        ax.scatter(xs, [r[f"{key}_control"] for r in rows], s=12, color="0.6", marker="x",
                   label="shuffled pairs (control)")
        by_size: dict[int, list[float]] = {}
        for x, r in zip(xs, rows, strict=True):
            by_size.setdefault(x, []).append(r[key])
        sizes = sorted(by_size)
        ax.plot(sizes, [float(np.mean(by_size[s])) for s in sizes], "-", color="C3",
                label="mean at that size")
        ax.set(xscale="log", xlabel="parameters of the smaller model of the pair", title=label)
        ax.xaxis.set_minor_formatter(NullFormatter())  # 2x10^7, 3x10^7 … overlap at this width
        ax.grid(alpha=0.3)
    for name, n in params.items():
        axes[0].annotate(name, (n, axes[0].get_ylim()[0]), fontsize=6, rotation=90,
                         xytext=(2, 4), textcoords="offset points")
    axes[0].legend(fontsize=7)
    return _finish(fig, path, command)
