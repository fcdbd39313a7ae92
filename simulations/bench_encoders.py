"""What ``encoder.dtype``, ``encoder.quantize`` and ``encoder.threads`` cost and buy, on the packaged models.

    python -m simulations.bench_encoders [--out reports/encoders] [--variants float32 int8 bfloat16]
                                         [--threads 1 2] [--n-speed 256] [--no-cache]

Speed: every model of the default config (the querier's and the providers') embeds the same
``--n-speed`` packaged texts (a seeded sample of the corpus) in each variant (float32; int8:
dynamic int8 Linear layers; bfloat16) on each thread count, after one warm-up batch; texts/s is the
best of ``--reps`` passes. Also: each variant's mean and lowest cosine to the float32 embeddings.

Accuracy (float32, int8 and bfloat16 embeddings by default): the default config's seeded split
(``dataset.n_public`` / ``n_private`` / ``n_query``, disjoint: ``simulations.benchmark``). For
each provider and each pair of (querier, provider) variants, the querier's map into the provider's
space is fitted on the public texts (ridge alpha chosen on the held-out public texts by R²,
refitted on all of them, as the querier does), the provider's head is trained on its private texts,
and the querier's mapped query texts are scored through it. Plaintext throughout: the encrypted
protocol gives the same predictions (docs/performance.md: its map within a relative 1.4e-5 of the
plaintext fit, logits within 4e-6, every prediction equal). ``native_accuracy``: the provider's
head on the provider's own embeddings of the query texts.

Embeddings for the accuracy part go through the embedding cache (``run.cache_dir``; float32 shares
the silos' entries, the other variants have their own keys); ``--no-cache`` embeds everything.
Writes ``speed.csv``, ``accuracy.csv``, ``speed.png`` (when matplotlib is installed) and
``report.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from silos.alignment import AffineMap, public_parts, scale_of
from silos.data import TextDataset
from silos.head import LinearHead
from simulations.benchmark import Split
from simulations.tables import write_csv

if TYPE_CHECKING:  # torch + transformers: imported by main, or by the caller that builds encoders
    from silos.encoders import Encoder

# Each variant as the encoder.* keys that select it.
VARIANTS = {
    "float32": {"dtype": "float32", "quantize": None},
    "int8": {"dtype": "float32", "quantize": "int8"},
    "bfloat16": {"dtype": "bfloat16", "quantize": None},
}
SPEED_COLUMNS = ["model", "variant", "threads", "texts", "seconds", "texts_per_s",
                 "speedup_vs_float32", "mean_cosine_to_float32", "min_cosine_to_float32"]
ACCURACY_COLUMNS = ["querier", "provider", "querier_variant", "provider_variant", "alpha",
                    "heldout_r2", "aligned_accuracy", "native_accuracy", "n_public",
                    "n_private", "n_query"]
PARTS = ("public", "private", "query")


@dataclass(frozen=True)
class Task:
    """The labelled corpus and its disjoint split; ``speed`` indexes the texts timed."""

    corpus: TextDataset
    split: Split
    speed: np.ndarray
    holdout: float
    alphas: tuple[float, ...]
    head_l2: float
    head_max_iter: int

    def texts(self, part: str) -> list[str]:
        index = self.speed if part == "speed" else getattr(self.split, part)
        return [self.corpus.texts[i] for i in index]


# (model, variant) -> an encoder; the benchmark sets its ``threads`` itself.
Loader = Callable[[str, str], "Encoder"]
# (encoder, texts) -> embeddings: ``encode_cached`` with a cache dir, or a plain encode.
Embed = Callable[["Encoder", Sequence[str]], np.ndarray]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def measure(load: Loader, embed: Embed, task: Task, *, models: Sequence[str],
            variants: Sequence[str], threads: Sequence[int], accuracy_variants: Sequence[str],
            reps: int = 1) -> tuple[list[dict], dict]:
    """Speed rows, and every (model, variant, part) embedding the accuracy part needs.

    Each model is loaded once per variant; its accuracy embeddings are made on the thread count
    that was fastest for it just before (on a shared machine that need not be the largest). The
    querier (``models[0]``) needs no private embeddings."""
    speed_texts = task.texts("speed")
    rows, embeddings = [], {}
    for model in models:
        reference: dict[int, np.ndarray] = {}  # float32's embeddings, per thread count
        for variant in variants:
            encoder = load(model, variant)
            encoder.show_progress = False
            for n_threads in threads:
                encoder.threads = n_threads
                encoder.encode(speed_texts[: encoder.batch_size])  # warm-up: kernels, allocations
                best, out = float("inf"), None
                for _ in range(reps):
                    start = time.perf_counter()
                    out = encoder.encode(speed_texts)
                    best = min(best, time.perf_counter() - start)
                if variant == "float32":
                    reference[n_threads] = out
                cos = _cosines(out, reference[n_threads])
                print(f"{model} {variant} threads={n_threads}: {len(speed_texts) / best:.1f} "
                      "texts/s", file=sys.stderr, flush=True)
                rows.append({"model": model, "variant": variant, "threads": n_threads,
                             "texts": len(speed_texts), "seconds": round(best, 3),
                             "texts_per_s": round(len(speed_texts) / best, 1),
                             "mean_cosine_to_float32": round(float(cos.mean()), 7),
                             "min_cosine_to_float32": round(float(cos.min()), 7)})
            if variant in accuracy_variants:
                mine = [r for r in rows if r["model"] == model and r["variant"] == variant]
                encoder.threads = max(mine, key=lambda r: r["texts_per_s"])["threads"]
                for part in PARTS:
                    if part == "private" and model == models[0]:
                        continue
                    embeddings[model, variant, part] = embed(encoder, task.texts(part))
            del encoder
    base = {(r["model"], r["threads"]): r["texts_per_s"] for r in rows if r["variant"] == "float32"}
    for row in rows:
        fp32 = base.get((row["model"], row["threads"]))
        row["speedup_vs_float32"] = round(row["texts_per_s"] / fp32, 2) if fp32 else ""
    return rows, embeddings


def _r2(Y: np.ndarray, P: np.ndarray) -> float:
    """Total-variance R² (the protocol's fit quality: every output dimension by its variance)."""
    return 1.0 - float(((Y - P) ** 2).sum()) / float(((Y - Y.mean(0)) ** 2).sum())


def fit_map(x_public: np.ndarray, y_public: np.ndarray, task: Task) -> tuple[AffineMap, float]:
    """The querier's map between the two scaled spaces: ridge alpha chosen by held-out R² on the
    protocol's cut of the public texts, then refitted on all of them; and that alpha's R²."""
    fit, val = public_parts(len(x_public), holdout=task.holdout, seed=task.split.seed)
    r2 = {a: _r2(y_public[val], AffineMap(a).fit(x_public[fit], y_public[fit]).transform(
        x_public[val])) for a in task.alphas}
    alpha = max(r2, key=r2.get)
    return AffineMap(alpha).fit(x_public, y_public), r2[alpha]


def accuracy(embeddings: dict, task: Task, *, querier: str, providers: Sequence[str],
             variants: Sequence[str]) -> list[dict]:
    """One row per provider and (querier variant, provider variant) pair: the plaintext protocol.
    Each silo scales its space by its largest public |coordinate|; the map is fitted on the public
    texts, the provider's head (one per variant) on its private ones."""
    labels = task.corpus.labels
    truth = labels[task.split.query]

    def scaled(model: str, variant: str) -> dict[str, np.ndarray]:
        scale = scale_of(embeddings[model, variant, "public"])
        return {part: embeddings[model, variant, part] / scale for part in PARTS
                if (model, variant, part) in embeddings}

    rows = []
    for provider in providers:
        spaces = {pv: scaled(provider, pv) for pv in variants}
        heads = {pv: LinearHead(l2=task.head_l2, max_iter=task.head_max_iter).fit(
            spaces[pv]["private"], labels[task.split.private], task.corpus.label_names)
            for pv in variants}
        for qv in variants:
            x = scaled(querier, qv)
            for pv in variants:
                y = spaces[pv]
                mapping, r2 = fit_map(x["public"], y["public"], task)
                aligned = heads[pv].predict(mapping.transform(x["query"]))
                native = heads[pv].predict(y["query"])
                rows.append({"querier": querier, "provider": provider, "querier_variant": qv,
                             "provider_variant": pv, "alpha": mapping.alpha,
                             "heldout_r2": round(r2, 4),
                             "aligned_accuracy": round(float((aligned == truth).mean()), 4),
                             "native_accuracy": round(float((native == truth).mean()), 4),
                             **{f"n_{p}": len(getattr(task.split, p)) for p in PARTS}})
    return rows


def plot(path: Path, speed: list[dict]) -> bool:
    """texts/s per model, variant and thread count; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    models = list(dict.fromkeys(r["model"] for r in speed))
    keys = list(dict.fromkeys((r["variant"], r["threads"]) for r in speed))
    value = {(r["model"], r["variant"], r["threads"]): r["texts_per_s"] for r in speed}
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / len(keys)
    for k, (variant, threads) in enumerate(keys):
        ax.bar([m + k * width for m in range(len(models))],
               [value.get((model, variant, threads), 0.0) for model in models], width,
               label=f"{variant}, {threads} thread{'s' if threads > 1 else ''}")
    ax.set_xticks([m + 0.4 - width / 2 for m in range(len(models))], models)
    ax.set_yscale("log")  # the models' speeds differ tenfold
    ax.set_ylabel("texts / s (log)")
    ax.set_title("Embedding throughput (CPU)")
    ax.legend(fontsize=7, ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _table(rows: list[dict], columns: list[str]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return lines


def write_report(out: Path, speed: list[dict], acc: list[dict], meta: dict) -> None:
    """speed.csv, accuracy.csv, speed.png and report.md in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "speed.csv", speed, SPEED_COLUMNS)
    write_csv(out / "accuracy.csv", acc, ACCURACY_COLUMNS)
    plotted = plot(out / "speed.png", speed)
    lines = [
        "# Encoder dtype, int8 quantisation and threads",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {meta['machine']}; torch {meta['torch']}. Load average (1, 5, 15 min) before: "
        f"{meta['load_before']}, after: {meta['load_after']}. Wall time: {meta['wall_s']:.0f} s.",
        "",
        "## Speed",
        "",
        f"{meta['n_speed']} texts of {meta['corpus']}, max_length {meta['max_length']}, batch size "
        f"{meta['batch_size']}, best of {meta['reps']} pass(es) after a warm-up batch. Cosines: "
        "each text's embedding against the float32 one on the same thread count. Thread counts "
        "share the cores with whatever else runs (the load average above): torch's threads wait "
        "for each other at every operation, so a count as large as the core count can be slower "
        "than one thread while another process holds a core.",
        "",
        *_table(speed, SPEED_COLUMNS),
        "",
        "![texts/s](speed.png)" if plotted else "(no plot: matplotlib is not installed)",
        "",
        "## Aligned accuracy",
        "",
        f"{meta['corpus']}, split seed {meta['seed']}: disjoint public / private / query texts. "
        "Plaintext map and head; the encrypted protocol gives the same predictions (its map within "
        "a relative 1.4e-5 of the plaintext fit, logits within 4e-6: docs/performance.md), so these "
        "are its accuracies. native_accuracy: the provider's head on its own embeddings of the "
        "query texts.",
        "",
        *_table(acc, ACCURACY_COLUMNS),
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unavailable"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="reports/encoders")
    parser.add_argument("--variants", nargs="+", default=["float32", "int8", "bfloat16"],
                        choices=list(VARIANTS))
    parser.add_argument("--accuracy-variants", nargs="+", default=["float32", "int8", "bfloat16"],
                        choices=list(VARIANTS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--n-speed", type=int, default=256)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--no-cache", action="store_true", help="embed everything again")
    parser.add_argument("overrides", nargs="*", help="config dotlist, e.g. dataset.n_query=200")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if not set(args.accuracy_variants) <= set(args.variants):
        parser.error("--accuracy-variants must be among --variants")
    if "float32" not in args.variants:
        parser.error("--variants needs float32 (the reference)")

    import torch

    from conf import active_silos, load_config
    from silos.data import load_corpus
    from silos.embedding_cache import encode_cached
    from silos.encoder_spec import EncoderSpec
    from silos.runtime import open_encoder
    from simulations.benchmark import split_corpus

    load_before, started = _loadavg(), time.perf_counter()
    cfg = load_config(args.overrides)
    silos = active_silos(cfg)
    querier = next(str(s.model) for s in silos.values() if s.role == "querier")
    providers = list(dict.fromkeys(str(s.model) for s in silos.values() if s.role == "provider"))
    cache_dir = Path(str(cfg.run.cache_dir)).expanduser()
    d = cfg.dataset
    corpus = load_corpus(str(d.name), text_column=str(d.text_column),
                         label_column=str(d.label_column), hf_split=str(d.hf_split))
    split = split_corpus(len(corpus), n_public=int(cfg.dataset.n_public),
                         n_private=int(cfg.dataset.n_private), n_query=int(cfg.dataset.n_query),
                         seed=int(cfg.run.seed))
    speed = np.sort(np.random.default_rng(int(cfg.run.seed) + 3).permutation(len(corpus))[
        : args.n_speed])
    task = Task(corpus, split, speed, float(cfg.alignment.holdout),
                tuple(float(a) for a in cfg.alignment.alphas), float(cfg.head.l2),
                int(cfg.head.max_iter))
    enc = cfg.encoder

    def load(model: str, variant: str) -> Encoder:
        spec = EncoderSpec.from_config(enc, model, {"device": "cpu", **VARIANTS[variant]},
                                       cache_dir=cache_dir)
        return open_encoder(spec, cache_dir)

    def embed(encoder: Encoder, texts: Sequence[str]) -> np.ndarray:
        return encode_cached(encoder, texts, None if args.no_cache else cache_dir)

    speed_rows, embeddings = measure(load, embed, task, models=[querier, *providers],
                                     variants=args.variants, threads=args.threads,
                                     accuracy_variants=args.accuracy_variants, reps=args.reps)
    acc_rows = accuracy(embeddings, task, querier=querier, providers=providers,
                        variants=args.accuracy_variants)
    meta = {"command": " ".join(["python -m simulations.bench_encoders", *argv]),
            "machine": f"{_cpu_name()}, {os.cpu_count()} cores",
            "torch": torch.__version__, "load_before": load_before, "load_after": _loadavg(),
            "wall_s": time.perf_counter() - started, "n_speed": len(speed),
            "corpus": str(cfg.dataset.name), "max_length": enc.max_length,
            "batch_size": int(enc.batch_size), "reps": args.reps, "seed": int(cfg.run.seed)}
    write_report(Path(args.out), speed_rows, acc_rows, meta)
    print((Path(args.out) / "report.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
