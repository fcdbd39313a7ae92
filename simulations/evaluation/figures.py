"""The suite's figures (PNG), one function per experiment; each names the command that made it."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


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
        for i, (key, label) in enumerate(kinds):
            ax.bar([j + i * width for j in range(len(mine))], [r[key] for r in mine], width,
                   label=label)
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
