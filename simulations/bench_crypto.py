"""Benchmark of the encrypted linear algebra: every head path against naive TenSEAL and plaintext,
and the encrypted fitting, on this machine.

    python -m simulations.bench_crypto                 # the full grid (~15 min on 2 cores)
    python -m simulations.bench_crypto --quick         # a small grid (~1 min), for CI
    python -m simulations.bench_crypto --out reports/crypto

Head paths, per (d, K, N): ``plaintext`` (numpy float64), ``naive`` (TenSEAL ``CKKSVector.matmul``
on a context with every Galois key, as the public demos do), ``dot`` (TenSEAL, one ``dot`` per
class), ``single`` (``crypto.head``: hybrid diagonals, querier-side baby steps, Galois keys for the
used steps only) and ``batched`` (``crypto.head``: feature-major, no rotations) at several batch
sizes, every reply protected (``crypto.privacy``: re-randomised, flooded, rescaled) as the product
serves it; for the first (d, K) also unprotected (``protection = off``), to show what it costs.
Latencies include serialisation: what a querier and a provider do per request. Writes
``head.csv``, ``fit.csv``, ``README.md`` (tables, and the targets met or not) and ``crypto.png``
into ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tenseal as ts
from tqdm.auto import tqdm

from conf import load_config
from crypto import (
    CircuitPrivacy,
    CkksKit,
    CKKSParams,
    CrossProductPacking,
    EncryptedLinearHead,
    SinglePlan,
    decrypt_logits,
    encrypt_queries,
)
from silos.alignment import AffineMap, augment
from simulations.tables import write_csv

HEAD_COLUMNS = ["path", "protection", "d", "K", "N", "batch", "latency_ms_per_query", "encrypt_ms_per_query",
                "evaluate_ms_per_query", "decrypt_ms_per_query", "queries_per_s",
                "bytes_in_per_query", "bytes_out_per_query", "context_bytes", "rotations",
                "max_abs_error", "argmax_agreement", "n_checked", "ratio_to_naive",
                "ratio_to_plaintext"]
FIT_COLUMNS = ["n", "d_q", "d_p", "N", "workers", "seconds", "encrypt_s", "multiply_s",
               "decrypt_s", "bytes_up", "bytes_down", "context_bytes", "max_abs_error",
               "map_relative_error"]


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def params_for(preset: str) -> CKKSParams:
    return CKKSParams.from_config(load_config([f"he.preset={preset}"]).he)


def tenseal_context(n: int) -> ts.Context:
    """The naive baseline's context: TenSEAL defaults, rescaling chain, every Galois key."""
    chain = [60, 40, 60] if n == 8192 else [60, 40, 40, 60]
    context = ts.context(ts.SCHEME_TYPE.CKKS, n, coeff_mod_bit_sizes=chain)
    context.global_scale = 2.0**40
    context.generate_galois_keys()
    return context


class HeadBench:
    """One (d, K, N) configuration: a random head and random aligned queries."""

    def __init__(self, d: int, k: int, preset: str, seed: int,
                 params: CKKSParams | None = None) -> None:
        rng = np.random.default_rng(seed)
        self.d, self.k, self.params = d, k, params or params_for(preset)
        self.n = self.params.poly_modulus_degree
        self.V = rng.normal(size=(d, k)) / np.sqrt(d)
        self.c = rng.normal(size=k)
        self.rng = rng
        self.querier = CkksKit.generate(self.params)
        self.head = EncryptedLinearHead(self.V, self.c)

    def queries(self, n: int) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, size=(n, self.d))

    def row(self, path: str, batch: int, times: list[tuple[float, float, float]], n_per_rep: int,
            bytes_in: int, bytes_out: int, context: int, errors: list[np.ndarray],
            rotations: int = 0, protection: str = "-") -> dict:
        enc, ev, dec = (statistics.median(t[i] for t in times) / n_per_rep * 1e3 for i in range(3))
        latency = enc + ev + dec
        err = np.concatenate(errors) if errors else np.zeros((0, 2))
        return {
            "path": path, "protection": protection, "d": self.d, "K": self.k, "N": self.n,
            "batch": batch,
            "latency_ms_per_query": latency, "encrypt_ms_per_query": enc,
            "evaluate_ms_per_query": ev, "decrypt_ms_per_query": dec,
            "queries_per_s": 1e3 / latency if latency else float("inf"),
            "bytes_in_per_query": bytes_in / n_per_rep, "bytes_out_per_query": bytes_out / n_per_rep,
            "context_bytes": context, "rotations": rotations,
            "max_abs_error": float(np.abs(err[:, 0]).max()) if len(err) else 0.0,
            "argmax_agreement": float(err[:, 1].mean()) if len(err) else 1.0,
            "n_checked": len(err),
        }

    def _check(self, Z: np.ndarray, logits: np.ndarray) -> np.ndarray:
        expected = Z @ self.V + self.c
        return np.stack([np.abs(logits - expected).max(axis=1),
                         logits.argmax(1) == expected.argmax(1)], axis=1)

    def plaintext(self, reps: int) -> dict:
        Z = self.queries(4096)
        times = [(0.0, timed(lambda: Z @ self.V + self.c)[0], 0.0) for _ in range(reps)]
        return self.row("plaintext", 4096, times, 4096, 0, 0, 0, [])

    def tenseal(self, path: str, context: ts.Context, reps: int) -> dict:
        public = context.copy()
        public.make_context_public()
        public_bytes = public.serialize(save_galois_keys=True)
        provider = ts.context_from(public_bytes)
        times, errors, bytes_in, bytes_out = [], [], 0, 0
        for _ in range(reps):
            z = self.queries(1)[0]
            t_enc, blob = timed(lambda z=z: ts.ckks_vector(context, z.tolist()).serialize())

            def evaluate(blob=blob):
                vector = ts.ckks_vector_from(provider, blob)
                if path == "naive":
                    return [(vector.matmul(self.V.tolist()) + self.c.tolist()).serialize()]
                return [(vector.dot(self.V[:, j].tolist()) + float(self.c[j])).serialize()
                        for j in range(self.k)]

            t_eval, outs = timed(evaluate)

            def decrypt(outs=outs):
                values = [ts.ckks_vector_from(context, o).decrypt() for o in outs]
                return np.asarray(values[0][: self.k] if path == "naive" else
                                  [v[0] for v in values])

            t_dec, logits = timed(decrypt)
            times.append((t_enc, t_eval, t_dec))
            errors.append(self._check(z[None], logits[None]))
            bytes_in, bytes_out = len(blob), sum(len(o) for o in outs)
        return self.row(path, 1, times, 1, bytes_in, bytes_out, len(public_bytes), errors)

    def single(self, reps: int, protect: bool = True) -> dict:
        plan = SinglePlan(self.d, self.k, self.querier.slots)
        context = self.querier.public_bytes(plan.rotation_steps)
        provider = CkksKit.from_public(context)
        privacy = CircuitPrivacy(provider) if protect else CircuitPrivacy.off(provider)
        head = EncryptedLinearHead(self.V, self.c)  # a fresh head: its diagonal cache starts empty
        head.evaluate(provider, encrypt_queries(self.querier, self.queries(1), path="single",
                                                n_classes=self.k), path="single", n=1,
                      privacy=privacy)  # warm-up
        times, errors, bytes_in, bytes_out = [], [], 0, 0
        for _ in range(reps):
            Z = self.queries(1)
            t_enc, blobs = timed(lambda Z=Z: encrypt_queries(self.querier, Z, path="single",
                                                             n_classes=self.k))
            t_eval, outs = timed(lambda b=blobs: head.evaluate(provider, b, path="single", n=1,
                                                               privacy=privacy))
            t_dec, logits = timed(lambda o=outs: decrypt_logits(self.querier, o, path="single",
                                                               n=1, n_classes=self.k))
            times.append((t_enc, t_eval, t_dec))
            errors.append(self._check(Z, logits))
            bytes_in, bytes_out = sum(map(len, blobs)), sum(map(len, outs))
        return self.row("single", 1, times, 1, bytes_in, bytes_out, len(context), errors,
                        plan.n_rotations, "on" if protect else "off")

    def batched(self, batch: int, reps: int, protect: bool = True) -> dict:
        context = self.querier.public_bytes()
        provider = CkksKit.from_public(context)
        privacy = CircuitPrivacy(provider) if protect else CircuitPrivacy.off(provider)
        times, errors, bytes_in, bytes_out = [], [], 0, 0
        for _ in range(reps):
            Z = self.queries(batch)
            t_enc, blobs = timed(lambda Z=Z: encrypt_queries(self.querier, Z, path="batched",
                                                             n_classes=self.k))
            t_eval, outs = timed(lambda b=blobs, n=batch: self.head.evaluate(
                provider, b, path="batched", n=n, privacy=privacy))
            t_dec, logits = timed(lambda o=outs, n=batch: decrypt_logits(
                self.querier, o, path="batched", n=n, n_classes=self.k))
            times.append((t_enc, t_eval, t_dec))
            errors.append(self._check(Z, logits))
            bytes_in, bytes_out = sum(map(len, blobs)), sum(map(len, outs))
        return self.row("batched", batch, times, batch, bytes_in, bytes_out, len(context), errors,
                        protection="on" if protect else "off")


def bench_fit(n: int, d_q: int, d_p: int, preset: str, workers: int, seed: int) -> dict:
    """Enc(X̃)ᵀY on synthetic embeddings related by a noisy linear map, then the ridge map."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1.0, 1.0, size=(n, d_q))
    Y = np.tanh(X @ rng.normal(size=(d_q, d_p)) / np.sqrt(d_q) + 0.1 * rng.normal(size=(n, d_p)))
    Y /= np.abs(Y).max()
    Xa = augment(X)
    querier = CkksKit.generate(params_for(preset))
    packing = CrossProductPacking.plan(n, d_q + 1, d_p, querier.slots)
    start = time.perf_counter()
    context = querier.public_bytes(packing.rotation_steps)
    t_enc, up = timed(lambda: packing.encrypt(querier, Xa))
    t_enc = time.perf_counter() - start
    provider = CkksKit.from_public(context)
    t_mul, down = timed(lambda: packing.multiply(provider, up, Y, workers=workers))
    t_dec, xty = timed(lambda: packing.decrypt(querier, down))
    encrypted = AffineMap(alpha=1.0).fit_from_stats(Xa.T @ Xa, xty, n_samples=n)
    plain = AffineMap(alpha=1.0).fit(X, Y)
    return {
        "n": n, "d_q": d_q, "d_p": d_p, "N": querier.params.poly_modulus_degree,
        "workers": workers, "seconds": t_enc + t_mul + t_dec, "encrypt_s": t_enc,
        "multiply_s": t_mul, "decrypt_s": t_dec, "bytes_up": sum(map(len, up)),
        "bytes_down": sum(map(len, down)), "context_bytes": len(context),
        "max_abs_error": float(np.abs(xty - Xa.T @ Y).max()),
        "map_relative_error": float(np.linalg.norm(encrypted.coef_ - plain.coef_)
                                    / np.linalg.norm(plain.coef_)),
    }


def add_ratios(rows: list[dict]) -> None:
    for row in rows:
        key = (row["d"], row["K"], row["N"])
        naive = next((r for r in rows if r["path"] == "naive" and (r["d"], r["K"], r["N"]) == key),
                     None)
        plain = next(r for r in rows if r["path"] == "plaintext" and (r["d"], r["K"]) == (key[:2]))
        row["ratio_to_naive"] = (row["latency_ms_per_query"] / naive["latency_ms_per_query"]
                                 if naive else float("nan"))
        row["ratio_to_plaintext"] = row["latency_ms_per_query"] / plain["latency_ms_per_query"]


def markdown(head: list[dict], fit: list[dict], command: str, load: str = "") -> str:
    lines = [f"# Encrypted linear algebra benchmark\n\nProduced by `{command}` on this machine "
             f"({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores{load}). Latency = encrypt + "
             "evaluate + decrypt per query, serialisation included, median over repetitions; "
             "errors against float64.\n",
             "## Head (Enc(z) ↦ Enc(zV + c))\n",
             "| path | protection | d | K | N | batch | ms/query | enc | eval | dec | queries/s "
             "| KiB in/q | KiB out/q | context KiB | rotations | max abs err | argmax agree "
             "| vs naive | vs plaintext |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in head:
        lines.append(
            f"| {r['path']} | {r['protection']} | {r['d']} | {r['K']} | {r['N']} | {r['batch']} "
            f"| {r['latency_ms_per_query']:.4g} | {r['encrypt_ms_per_query']:.3g} "
            f"| {r['evaluate_ms_per_query']:.3g} | {r['decrypt_ms_per_query']:.3g} "
            f"| {r['queries_per_s']:.4g} | {r['bytes_in_per_query'] / 1024:.3g} "
            f"| {r['bytes_out_per_query'] / 1024:.3g} | {r['context_bytes'] / 1024:.4g} "
            f"| {r['rotations']} | {r['max_abs_error']:.1e} | {r['argmax_agreement']:.4f} "
            f"| {r['ratio_to_naive']:.2g} | {r['ratio_to_plaintext']:.3g} |")
    lines += ["\n## Encrypted fitting (Enc(X̃)ᵀY, then the ridge map)\n",
              "| n | d_q → d_p | N | workers | seconds | enc | multiply | dec | MiB up | MiB down "
              "| context MiB | max abs err | map rel err |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in fit:
        lines.append(
            f"| {r['n']} | {r['d_q']} → {r['d_p']} | {r['N']} | {r['workers']} | {r['seconds']:.1f} "
            f"| {r['encrypt_s']:.1f} | {r['multiply_s']:.1f} | {r['decrypt_s']:.1f} "
            f"| {r['bytes_up'] / 2**20:.1f} | {r['bytes_down'] / 2**20:.1f} "
            f"| {r['context_bytes'] / 2**20:.1f} | {r['max_abs_error']:.1e} "
            f"| {r['map_relative_error']:.1e} |")
    lines += ["\n## Targets (protection on)\n", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {'yes' if ok else 'no'} |" for name, value, ok in
              targets(head, fit)]
    return "\n".join(lines) + "\n"


def targets(head: list[dict], fit: list[dict]) -> list[tuple[str, str, bool]]:
    """The project's performance targets against this run's rows (those it measured)."""
    def pick(path: str, d: int, k: int, batch: int | None = None) -> dict | None:
        return next((r for r in head if r["path"] == path and r["protection"] == "on"
                     and (r["d"], r["K"], r["N"]) == (d, k, 8192)
                     and (batch is None or r["batch"] == batch)), None)

    out = []
    for d, limit in ((384, 20.0), (4096, 30.0)):
        if (r := pick("single", d, 5)) is not None:
            ms = r["latency_ms_per_query"]
            out.append((f"single query, d={d} → K=5: ≤ {limit:g} ms", f"{ms:.1f} ms", ms <= limit))
    if (r := pick("batched", 384, 5, 4096)) is not None:
        kib = (r["bytes_in_per_query"] + r["bytes_out_per_query"]) / 1024
        out.append(("batched B=4096, d=384, K=5: ≥ 3,500 queries/s",
                    f"{r['queries_per_s']:,.0f} queries/s", r["queries_per_s"] >= 3500))
        out.append(("… ≤ 16 KiB per query on the wire", f"{kib:.1f} KiB", kib <= 16))
    for r in fit:
        if (r["n"], r["d_q"], r["d_p"]) == (2000, 384, 768):
            out.append(("encrypted fitting n=2,000, 384 → 768: ≤ 60 s",
                        f"{r['seconds']:.1f} s ({r['workers']} processes)", r["seconds"] <= 60))
        out.append((f"fitted map vs plaintext fit ≤ 1e-3 relative (n={r['n']})",
                    f"{r['map_relative_error']:.1e}", r["map_relative_error"] <= 1e-3))
    for r in head:
        if r["protection"] == "on" and r["n_checked"] >= 10_000:
            ok = r["max_abs_error"] <= 1e-3 and r["argmax_agreement"] == 1.0
            out.append((f"{r['path']} d={r['d']} K={r['K']}: max abs error ≤ 1e-3 and the same "
                        f"argmax on {r['n_checked']:,} random queries",
                        f"{r['max_abs_error']:.1e}, agreement {r['argmax_agreement']:.4f}", ok))
    return out


README_START, README_END = "<!-- bench_crypto:start -->", "<!-- bench_crypto:end -->"


def readme_summary(head: list[dict], fit: list[dict], command: str) -> str:
    """The README's performance block: the headline rows, from this run only."""
    def pick(path: str, d: int, k: int, batch: int | None = None) -> dict | None:
        return next((r for r in head if r["path"] == path and r["d"] == d and r["K"] == k
                     and r["N"] == min(x["N"] for x in head)
                     and (batch is None or r["batch"] == batch)), None)

    lines = [README_START, "",
             f"Measured by `{command}` (full tables, CSVs and plot in `reports/crypto/`):", "",
             "| path (N=8192) | d → K | batch | ms/query | queries/s | KiB in + out per query "
             "| context KiB | max abs err | vs naive |",
             "|---|---|---|---|---|---|---|---|---|"]
    for path, d, k, batch in (("plaintext", 384, 5, None), ("naive", 384, 5, None),
                              ("dot", 384, 5, None), ("single", 384, 5, None),
                              ("batched", 384, 5, 1), ("batched", 384, 5, 64),
                              ("batched", 384, 5, 4096), ("single", 4096, 5, None),
                              ("batched", 4096, 5, 4096), ("single", 768, 50, None)):
        r = pick(path, d, k, batch)
        if r is None:
            continue
        lines.append(
            f"| {path} | {d} → {k} | {r['batch']} | {r['latency_ms_per_query']:.3g} "
            f"| {r['queries_per_s']:.4g} "
            f"| {(r['bytes_in_per_query'] + r['bytes_out_per_query']) / 1024:.3g} "
            f"| {r['context_bytes'] / 1024:.4g} | {r['max_abs_error']:.0e} "
            f"(n={r['n_checked']}) | {r['ratio_to_naive']:.2g} |")
    lines += ["", "| encrypted fitting | seconds (enc + multiply + dec) | MiB up / down "
              "| context MiB | map relative error |", "|---|---|---|---|---|"]
    for r in fit:
        lines.append(f"| n={r['n']}, {r['d_q']} → {r['d_p']}, N={r['N']}, {r['workers']} processes "
                     f"| {r['seconds']:.1f} | {r['bytes_up'] / 2**20:.0f} / "
                     f"{r['bytes_down'] / 2**20:.0f} | {r['context_bytes'] / 2**20:.1f} "
                     f"| {r['map_relative_error']:.0e} |")
    return "\n".join([*lines, "", README_END])


def update_readme(readme: Path, block: str, start: str = README_START, end: str = README_END) -> None:
    """Replace the README's ``start … end`` block (both markers included in ``block``)."""
    text = readme.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{readme} has no {start} … {end} block to replace")
    head, rest = text.split(start, 1)
    readme.write_text(head + block + rest.split(end, 1)[1])


def plot(head: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    n0 = min(r["N"] for r in head)
    for ax, k in zip(axes, sorted({r["K"] for r in head}), strict=False):
        rows = [r for r in head if r["K"] == k and r["N"] == n0]
        series: dict[str, list[dict]] = {}
        for r in rows:
            label = f"batched B={r['batch']}" if r["path"] == "batched" else r["path"]
            series.setdefault(label, []).append(r)
        for label, rs in sorted(series.items()):
            rs.sort(key=lambda r: r["d"])
            ax.plot([r["d"] for r in rs], [r["latency_ms_per_query"] for r in rs], marker="o",
                    label=label)
        ax.set(xscale="log", yscale="log", xlabel="d (aligned dimension)",
               ylabel="ms per query (enc + eval + dec)", title=f"K = {k} classes, N = {n0}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small grid (d=64, 384; K=5; N=8192; fitting n=300): about a minute")
    parser.add_argument("--out", type=Path, default=Path("reports/crypto"),
                        help="folder for head.csv, fit.csv, README.md, crypto.png")
    parser.add_argument("--dims", type=int, nargs="+", default=[384, 576, 768, 4096])
    parser.add_argument("--classes", type=int, nargs="+", default=[5, 50])
    parser.add_argument("--presets", nargs="+", default=["n8192", "n16384"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 512, 4096])
    parser.add_argument("--reps", type=int, default=3, help="repetitions per measurement")
    parser.add_argument("--naive-reps", type=int, default=1,
                        help="repetitions of the naive matmul (seconds each)")
    parser.add_argument("--check-queries", type=int, default=10_000,
                        help="random queries checked against float64 for single and batched at "
                             "the first (d, K, N)")
    parser.add_argument("--fit", type=int, nargs="+", default=[640, 2000],
                        help="numbers of public texts for the fitting benchmark")
    parser.add_argument("--fit-dims", type=int, nargs=2, default=[384, 768],
                        metavar=("D_Q", "D_P"), help="querier and provider dimensions of the fit")
    parser.add_argument("--workers", type=int, default=2, help="provider processes for fitting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--readme", type=Path, default=None,
                        help="also rewrite the bench_crypto block of this README")
    parser.add_argument("--summarize", action="store_true",
                        help="measure nothing: rebuild the plot and the --readme block from the "
                             "CSVs and report already in --out")
    if "--quick" in (sys.argv[1:] if argv is None else argv):  # explicit options still win
        parser.set_defaults(dims=[64, 384], classes=[5], presets=["n8192"], batches=[1, 64, 4096],
                            reps=3, check_queries=2000, fit=[300])
    return parser.parse_args(argv)


def read_csv(path: Path) -> list[dict]:
    def value(text: str) -> object:
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return text

    with path.open() as f:
        return [{k: value(v) for k, v in row.items()} for row in csv.DictReader(f)]


def summarize(args: argparse.Namespace) -> int:
    """Plot and README block from a finished run (its command is read from its report)."""
    head, fit = read_csv(args.out / "head.csv"), read_csv(args.out / "fit.csv")
    report = (args.out / "README.md").read_text()
    command = report.split("Produced by `", 1)[1].split("`", 1)[0]
    plot(head, args.out / "crypto.png")
    if args.readme is not None:
        update_readme(args.readme, readme_summary(head, fit, command))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.summarize:
        return summarize(args)
    command = "python -m simulations.bench_crypto " + " ".join(argv if argv is not None
                                                                else sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    head: list[dict] = []
    configs = [(d, k, p) for p in args.presets for k in args.classes for d in args.dims]
    contexts = {}
    partial = args.out / "head.partial.csv"  # rows so far, in case the run is cut short
    for index, (d, k, preset) in enumerate(tqdm(configs, desc="head configs")):
        bench = HeadBench(d, k, preset, args.seed + index)
        head.append(bench.plaintext(args.reps))
        n = bench.n
        if n not in contexts:
            contexts[n] = tenseal_context(n)
        for path, reps in (("naive", args.naive_reps), ("dot", args.reps)):
            try:
                head.append(bench.tenseal(path, contexts[n], reps))
            except (ValueError, RuntimeError) as err:  # TenSEAL's limits, e.g. matmul sizes
                print(f"{path} d={d} K={k} N={n}: not possible with TenSEAL ({err})")
        head.append(bench.single(args.reps))
        head.extend(bench.batched(b, args.reps if b < 4096 else max(1, args.reps // 2))
                    for b in args.batches)
        if index == 0:  # what the protection costs, in the same run
            head.append(bench.single(args.reps, protect=False))
            head.append(bench.batched(max(args.batches), max(1, args.reps // 2), protect=False))
        if index == 0 and args.check_queries:  # every path checked on 10,000 random queries
            for path in ("single", "batched"):
                row = next(r for r in head[::-1] if r["path"] == path and r["protection"] == "on")
                row.update(check_many(bench, path, args.check_queries))
        write_csv(partial, head, HEAD_COLUMNS)
    add_ratios(head)
    fit = [bench_fit(n, *args.fit_dims, args.presets[0], args.workers, args.seed)
           for n in tqdm(args.fit, desc="fitting")]
    write_csv(args.out / "head.csv", head, HEAD_COLUMNS)
    partial.unlink(missing_ok=True)
    write_csv(args.out / "fit.csv", fit, FIT_COLUMNS)
    load = (f"; 1-min load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after: "
            "other work on the machine slows every row alike")
    (args.out / "README.md").write_text(markdown(head, fit, command, load))
    plot(head, args.out / "crypto.png")
    print(markdown(head, fit, command, load))
    if args.readme is not None:
        update_readme(args.readme, readme_summary(head, fit, command))
    return 0


def check_many(bench: HeadBench, path: str, n: int) -> dict:
    """Max error and argmax agreement over ``n`` random queries through one path."""
    Z = bench.queries(n)
    plan = SinglePlan(bench.d, bench.k, bench.querier.slots)
    steps = plan.rotation_steps if path == "single" else []
    provider = CkksKit.from_public(bench.querier.public_bytes(steps))
    errors = []
    step = 1 if path == "single" else bench.querier.slots
    for first in tqdm(range(0, n, 256 if path == "single" else step), desc=f"check {path}",
                      leave=False):
        block = Z[first : first + (256 if path == "single" else step)]
        blobs = encrypt_queries(bench.querier, block, path=path, n_classes=bench.k)
        outs = bench.head.evaluate(provider, blobs, path=path, n=len(block))
        logits = decrypt_logits(bench.querier, outs, path=path, n=len(block), n_classes=bench.k)
        errors.append(bench._check(block, logits))
    err = np.concatenate(errors)
    return {"max_abs_error": float(err[:, 0].max()), "argmax_agreement": float(err[:, 1].mean()),
            "n_checked": len(err)}


if __name__ == "__main__":
    raise SystemExit(main())
