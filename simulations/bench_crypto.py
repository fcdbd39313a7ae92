"""Benchmark of the encrypted linear algebra: every head path against naive TenSEAL and plaintext,
and the encrypted fitting, on this machine.

    python -m simulations.bench_crypto                 # the full grid (~40 min on 2 cores)
    python -m simulations.bench_crypto --quick         # a small grid (~2 min), for CI
    python -m simulations.bench_crypto --out reports/crypto
    python -m simulations.bench_crypto --calibrate     # time the primitives, write serve.cost_model

Head paths, per (d, K, N): ``plaintext`` (numpy float64), ``naive`` (TenSEAL ``CKKSVector.matmul``
on a context with every Galois key, as the public demos do), ``dot`` (TenSEAL, one ``dot`` per
class), ``single`` (``crypto.head``: hybrid diagonals, querier-side baby steps, Galois keys for the
used steps only) and ``batched`` (``crypto.head``: feature-major, no rotations) at several batch
sizes, every reply protected (``crypto.privacy``: re-randomised, flooded, rescaled) as the product
serves it; for the first (d, K) also unprotected (``protection = off``), to show what it costs.
Latencies include serialisation: what a querier and a provider do per request.

Serving over helper processes (``serve.csv``): requests at the first (d, K, N) through each path
with ``workers`` = 1, 2, … processes per side (``crypto.processes``), timed once the helpers are
warm, as a silo serving a stream of requests has them. Path choice (``paths.csv``): over a grid of
(d, K, N, n), both paths' measured requests against the choice of ``crypto.cost`` from the
calibration that ``serve.cost_model`` names (``--calibrate`` writes it, from this machine).

Writes ``head.csv``, ``fit.csv``, ``serve.csv``, ``paths.csv``, ``README.md`` (tables, and the
targets met or not) and ``crypto.png`` into ``--out``.
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

from conf import CONF_DIR, load_config
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
from crypto.cost import PRIMITIVES, Calibration, CostModel, seconds_per_byte
from crypto.processes import pool
from silos.alignment import AffineMap, augment
from simulations.tables import write_csv

HEAD_COLUMNS = ["path", "protection", "d", "K", "N", "batch", "latency_ms_per_query", "encrypt_ms_per_query",
                "evaluate_ms_per_query", "decrypt_ms_per_query", "queries_per_s",
                "bytes_in_per_query", "bytes_out_per_query", "context_bytes", "rotations",
                "max_abs_error", "argmax_agreement", "n_checked", "ratio_to_naive",
                "ratio_to_plaintext"]
SERVE_COLUMNS = ["path", "d", "K", "N", "n", "workers", "encrypt_ms", "evaluate_ms", "decrypt_ms",
                 "queries_per_s", "evaluate_queries_per_s", "speedup", "evaluate_speedup",
                 "cpu_s_here", "cpu_s_busiest_helper", "cpu_s_critical", "cpu_speedup",
                 "max_abs_error",
                 "max_abs_diff_vs_1_worker", "reps"]
PATH_COLUMNS = ["d", "K", "N", "n", "batched_s", "single_s", "batched_bytes", "single_bytes",
                "single_context_bytes", "batched_timed_n", "single_timed_n",
                "predicted_batched_s", "predicted_single_s", "best_time", "chosen_time",
                "time_ratio", "best_link", "chosen_link", "link_ratio", "single_max_path",
                "max_abs_error"]
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


def _median_call(fn: Callable[[], object], reps: int) -> float:
    """Median seconds of one call of ``fn`` (after one untimed call)."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def calibrate(params: CKKSParams, *, reps: int) -> Calibration:
    """Seconds per primitive of ``crypto.cost``, called as ``crypto.head`` calls them (checks and
    serialisation included), and the exact sizes of what crosses the wire, for one parameter set."""
    rng = np.random.default_rng(0)
    querier = CkksKit.generate(params)
    values = rng.uniform(-1.0, 1.0, querier.slots)
    provider = CkksKit.from_public(querier.public_bytes([1]))
    privacy = CircuitPrivacy(provider)
    probe = EncryptedLinearHead(rng.normal(size=(384, 5)) / np.sqrt(384), rng.normal(size=5))
    blob = querier.encrypt(values)
    ct = provider.load(blob)
    scale, noises = probe._batched_scale(provider, ct, 0.0, privacy)
    plain = provider.encode(values, scale, like=ct)
    acc = provider.multiply_add(None, ct, plain)
    seconds = {
        "encrypt": _median_call(lambda: querier.encrypt(values), reps),
        "load_query": _median_call(lambda: provider.load(blob), reps),
        "scalar_multiply_add": _median_call(
            lambda: provider.multiply_add(acc, ct, provider.encode(0.3, scale, like=ct)), reps),
        "multiply_add": _median_call(lambda: provider.multiply_add(acc, ct, plain), reps),
        "rotate": _median_call(lambda: provider.rotate(acc, 1), reps),
        "encode": _median_call(lambda: provider.encode(values, scale, like=ct), reps),
    }
    products = [provider.multiply_add(None, ct, plain) for _ in range(reps + 1)]
    seconds["protect"] = _median_call(lambda: privacy.protect(products.pop(), noises[0]), reps)
    reply = provider.dump(privacy.protect(provider.multiply_add(None, ct, plain), noises[0]))
    loaded = querier.load(reply)
    seconds["dump_reply"] = _median_call(lambda: provider.dump(loaded), reps)
    seconds["load_reply"] = _median_call(lambda: querier.load(reply), reps)
    seconds["decrypt"] = _median_call(lambda: querier.decrypt(loaded), reps)
    contexts = [len(querier.public_bytes(steps)) for steps in ([], [1], [1, 2])]
    return Calibration(params.poly_modulus_degree, tuple(params.coeff_mod_bit_sizes), seconds,
                       query_bytes=len(blob), reply_bytes=len(reply), context_bytes=contexts[0],
                       galois_bytes=contexts[1] - contexts[0],
                       galois_key_bytes=contexts[2] - contexts[1])


def measure_path(bench: HeadBench, path: str, n: int, *, reps: int, sample: int) -> dict:
    """Compute seconds (encrypt + evaluate + decrypt, one process each) and bytes of one request of
    ``n`` queries on ``path``, with the head built per request as ``silos/provider.py`` builds it.

    The single path is timed on ``m = min(n, sample)`` queries: a request to a fresh head (its
    diagonals encoded) and one more to the same head give the per-request and per-query parts,
    and the time is their sum for n queries (its queries are independent); ``timed_n`` says m."""
    steps = SinglePlan(bench.d, bench.k, bench.querier.slots).rotation_steps \
        if path == "single" else []
    context = bench.querier.public_bytes(steps)
    provider = CkksKit.from_public(context)
    m = n if path == "batched" else min(n, sample)

    def request(head: EncryptedLinearHead) -> tuple[float, list[bytes], list[bytes], np.ndarray]:
        Z = bench.queries(m)
        t_enc, blobs = timed(lambda: encrypt_queries(bench.querier, Z, path=path, n_classes=bench.k))
        t_eval, outs = timed(lambda: head.evaluate(provider, blobs, path=path, n=m))
        t_dec, logits = timed(lambda: decrypt_logits(bench.querier, outs, path=path, n=m,
                                                     n_classes=bench.k))
        return t_enc + t_eval + t_dec, blobs, outs, bench._check(Z, logits)

    totals, errors = [], []
    for _ in range(reps):
        head = EncryptedLinearHead(bench.V, bench.c)  # a fresh head per request
        cold, blobs, outs, err = request(head)
        errors.append(err)
        if m < n:
            warm, _, _, err = request(head)
            errors.append(err)
            cold = max(cold - warm, 0.0) + warm / m * n
        totals.append(cold)
    err = np.concatenate(errors)
    return {"seconds": statistics.median(totals), "bytes_up": sum(map(len, blobs)) // m * n,
            "bytes_down": sum(map(len, outs)) // m * n if path == "single" else
            sum(map(len, outs)), "context_bytes": len(context), "timed_n": m,
            "max_abs_error": float(err[:, 0].max()), "argmax_agreement": float(err[:, 1].mean())}


def _helper_cpu() -> dict[int, float]:
    """CPU seconds each idle helper of this process has used so far (from /proc)."""
    out = {}
    for pid in pool().pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def bench_serve(bench: HeadBench, path: str, n: int, workers: list[int], reps: int) -> list[dict]:
    """Requests of ``n`` queries through ``path`` with each number of processes per side, protected,
    timed once the helpers are warm (started, kits built: a silo serving a stream has them).
    Workers alternate within each repetition, so load on the machine falls on all alike. Besides
    the clock, CPU seconds per request here and in the busiest helper, and per phase (encrypt,
    evaluate, decrypt) the busiest process's summed: what the request takes on free cores,
    whatever else runs on the machine (``cpu_speedup``: that, 1 worker over w)."""
    steps = SinglePlan(bench.d, bench.k, bench.querier.slots).rotation_steps \
        if path == "single" else []
    provider = CkksKit.from_public(bench.querier.public_bytes(steps))
    head = EncryptedLinearHead(bench.V, bench.c)

    def phase(fn: Callable[[], object]) -> tuple[float, float, float, object]:
        """Wall seconds, CPU seconds here and in the busiest helper, and the result of ``fn``."""
        cpu, helpers = time.process_time(), _helper_cpu()
        wall, value = timed(fn)
        after = _helper_cpu()
        busiest = max((after[p] - helpers.get(p, 0.0) for p in after), default=0.0)
        return wall, time.process_time() - cpu, busiest, value

    def request(Z: np.ndarray, w: int) -> tuple[tuple[float, ...], np.ndarray]:
        t_enc, c_enc, h_enc, blobs = phase(lambda: encrypt_queries(
            bench.querier, Z, path=path, n_classes=bench.k, workers=w))
        t_eval, c_eval, h_eval, outs = phase(lambda: head.evaluate(
            provider, blobs, path=path, n=len(Z), workers=w))
        t_dec, c_dec, _, logits = phase(lambda: decrypt_logits(
            bench.querier, outs, path=path, n=len(Z), n_classes=bench.k))
        # on free cores a phase lasts as long as its busiest process
        critical = max(c_enc, h_enc) + max(c_eval, h_eval) + c_dec
        return (t_enc, t_eval, t_dec, c_enc + c_eval + c_dec, h_enc + h_eval, critical), logits

    for w in workers:  # warm-up: helpers started, kits and head built in each
        request(bench.queries(n), w)
    times: dict[int, list] = {w: [] for w in workers}
    errors: dict[int, list] = {w: [] for w in workers}
    diffs: dict[int, list] = {w: [] for w in workers}
    for _ in range(reps):
        Z = bench.queries(n)
        logits = {}
        for w in workers:
            t, logits[w] = request(Z, w)
            times[w].append(t)
            errors[w].append(np.abs(logits[w] - (Z @ bench.V + bench.c)).max())
        for w in workers:
            diffs[w].append(np.abs(logits[w] - logits[workers[0]]).max())
    rows = []
    for w in workers:
        enc, ev, dec, here, helper, critical = (statistics.median(t[i] for t in times[w])
                                                for i in range(6))
        rows.append({"path": path, "d": bench.d, "K": bench.k, "N": bench.n, "n": n,
                     "workers": w, "encrypt_ms": enc * 1e3, "evaluate_ms": ev * 1e3,
                     "decrypt_ms": dec * 1e3, "queries_per_s": n / (enc + ev + dec),
                     "evaluate_queries_per_s": n / ev, "cpu_s_here": here,
                     "cpu_s_busiest_helper": helper, "cpu_s_critical": critical,
                     "max_abs_error": float(max(errors[w])),
                     "max_abs_diff_vs_1_worker": float(max(diffs[w])), "reps": reps})
    for row in rows:
        row["speedup"] = row["queries_per_s"] / rows[0]["queries_per_s"]
        row["evaluate_speedup"] = row["evaluate_queries_per_s"] / rows[0]["evaluate_queries_per_s"]
        row["cpu_speedup"] = rows[0]["cpu_s_critical"] / row["cpu_s_critical"]
    return rows


def bench_paths(model: CostModel, dims: list[int], classes: list[int], presets: list[str],
                sizes: list[int], *, link_mbit_s: float, reps: int, sample: int,
                single_max: int, seed: int) -> list[dict]:
    """Both paths measured over the grid, against the cost model's choice, at ``link_mbit_s``
    (bytes weighed as seconds on that link) and on time alone. A batched request costs the same
    for every n in one group of S slots, so it is timed once per group count, at the largest n."""
    spb = seconds_per_byte(link_mbit_s)
    rows = []
    configs = [(d, k, p) for p in presets for k in classes for d in dims]
    for index, (d, k, preset) in enumerate(tqdm(configs, desc="path grid")):
        bench = HeadBench(d, k, preset, seed + index)
        params, slots = bench.params, bench.querier.slots
        batched: dict[int, dict] = {}
        for groups in sorted({-(-n // slots) for n in sizes}):
            largest = max(n for n in sizes if -(-n // slots) == groups)
            batched[groups] = measure_path(bench, "batched", largest, reps=reps, sample=sample)
        for n in sizes:
            b = batched[-(-n // slots)]
            s = measure_path(bench, "single", n, reps=reps, sample=sample)
            cost = {"batched": b["seconds"], "single": s["seconds"]}
            sent = {"batched": b["bytes_up"] + b["bytes_down"],
                    "single": s["bytes_up"] + s["bytes_down"]}
            link = {p: cost[p] + spb * sent[p] for p in cost}
            chosen = {w: model.choose_path(d, k, n, params=params, seconds_per_byte=w,
                                           count_context=False) for w in (0.0, spb)}
            rows.append({
                "d": d, "K": k, "N": bench.n, "n": n, "batched_s": cost["batched"],
                "single_s": cost["single"], "batched_bytes": sent["batched"],
                "single_bytes": sent["single"], "single_context_bytes": s["context_bytes"],
                "batched_timed_n": b["timed_n"], "single_timed_n": s["timed_n"],
                "predicted_batched_s": model.cost("batched", d, k, n, params=params).seconds,
                "predicted_single_s": model.cost("single", d, k, n, params=params).seconds,
                "best_time": min(cost, key=cost.get), "chosen_time": chosen[0.0],
                "time_ratio": cost[chosen[0.0]] / min(cost.values()),
                "best_link": min(link, key=link.get), "chosen_link": chosen[spb],
                "link_ratio": link[chosen[spb]] / min(link.values()),
                "single_max_path": "single" if n <= single_max else "batched",
                "max_abs_error": max(b["max_abs_error"], s["max_abs_error"])})
    return rows


def add_ratios(rows: list[dict]) -> None:
    for row in rows:
        key = (row["d"], row["K"], row["N"])
        naive = next((r for r in rows if r["path"] == "naive" and (r["d"], r["K"], r["N"]) == key),
                     None)
        plain = next(r for r in rows if r["path"] == "plaintext" and (r["d"], r["K"]) == (key[:2]))
        row["ratio_to_naive"] = (row["latency_ms_per_query"] / naive["latency_ms_per_query"]
                                 if naive else float("nan"))
        row["ratio_to_plaintext"] = row["latency_ms_per_query"] / plain["latency_ms_per_query"]


def markdown(head: list[dict], fit: list[dict], command: str, load: str = "", *,
             serve: list[dict] = (), paths: list[dict] = (), model: CostModel | None = None,
             loads: dict | None = None, link_mbit_s: float = float("nan"),
             model_path: Path | None = None) -> str:
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
    loads = loads or {}
    if serve:
        lines += [serve_markdown(serve, loads)]
    if paths and model is not None:
        lines += [paths_markdown(paths, model, loads, link_mbit_s, model_path)]
    lines += ["\n## Targets (protection on)\n", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {'yes' if ok else 'no'} |" for name, value, ok in
              targets(head, fit, serve, paths)]
    return "\n".join(lines) + "\n"


def serve_markdown(serve: list[dict], loads: dict) -> str:
    lines = ["\n## Serving over helper processes (`workers`, crypto/processes.py)\n",
             "One request of n queries, protected, through one process per side (`workers` = 1) "
             "or spread over that many (this process and persistent helpers, already warm); "
             "median over the repetitions, the worker counts alternating within each. CPU "
             "columns: seconds of CPU per request (encrypt + evaluate + decrypt) in this process "
             "and in the busiest helper; CPU speed-up: the sum over the phases of the busiest "
             "process's CPU seconds, 1 worker over w: the speed-up on free cores, whatever else "
             "runs on the machine. Load "
             f"average (1 / 5 / 15 min) {loads.get('serve_before', '?')} before, "
             f"{loads.get('serve_after', '?')} after.\n",
             "| path | d | K | N | n | workers | enc ms | eval ms | dec ms | queries/s "
             "| eval queries/s | speed-up | eval speed-up | CPU s here | CPU s busiest helper "
             "| CPU speed-up | max abs err | max diff vs 1 worker | reps |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in serve:
        lines.append(
            f"| {r['path']} | {r['d']} | {r['K']} | {r['N']} | {r['n']} | {r['workers']} "
            f"| {r['encrypt_ms']:.4g} | {r['evaluate_ms']:.4g} | {r['decrypt_ms']:.3g} "
            f"| {r['queries_per_s']:.4g} | {r['evaluate_queries_per_s']:.4g} "
            f"| {r['speedup']:.2f}× | {r['evaluate_speedup']:.2f}× | {r['cpu_s_here']:.3g} "
            f"| {r['cpu_s_busiest_helper']:.3g} | {r['cpu_speedup']:.2f}× "
            f"| {r['max_abs_error']:.1e} | {r['max_abs_diff_vs_1_worker']:.1e} | {r['reps']} |")
    return "\n".join(lines)


def calibration_markdown(model: CostModel) -> str:
    cals = list(model.calibrations.values())
    lines = ["| primitive | what | " + " | ".join(c.key for c in cals) + " |",
             "|---|---|" + "---|" * len(cals)]
    for name, what in PRIMITIVES.items():
        lines.append(f"| {name} | {what} | "
                     + " | ".join(f"{c.seconds[name] * 1e3:.3g} ms" for c in cals) + " |")
    for name in ("query_bytes", "reply_bytes", "context_bytes", "galois_bytes",
                 "galois_key_bytes"):
        lines.append(f"| {name} | bytes | " + " | ".join(f"{getattr(c, name):,}" for c in cals)
                     + " |")
    return "\n".join(lines)


def paths_markdown(paths: list[dict], model: CostModel, loads: dict, link_mbit_s: float,
                   model_path: Path | None) -> str:
    about = model.about
    if model_path is not None and model_path.is_relative_to(CONF_DIR.parent):
        model_path = model_path.relative_to(CONF_DIR.parent)  # as the repository names it
    lines = ["\n## Path choice (crypto/cost.py)\n",
             f"Both paths measured per request of n queries (encrypt + evaluate + decrypt, one "
             "process each, the head built per request as the provider does), against the path "
             f"the cost model picks from its calibration (`{model_path}`: `{about.get('command')}`, "
             f"{about.get('date')}, load {about.get('loadavg_before')}) — on time alone, and with "
             f"every byte on a {link_mbit_s:g} Mbit/s link (`serve.link_mbit_s`). `timed n`: "
             "queries actually run (a batched request costs the same for every n of one group; "
             "the single path's time is its per-request part plus n × its per-query part, both "
             "timed); ratio: the chosen path's measured cost over the better one's. `single_max`: "
             "what the constant rule picks. Bytes are query ciphertexts + replies, context "
             "excluded (the single path's Galois keys, once per session, in their own column). "
             f"Load average {loads.get('paths_before', '?')} before, "
             f"{loads.get('paths_after', '?')} after.\n",
             "Calibration:\n", calibration_markdown(model), "",
             "| d | K | N | n | batched s | single s | model batched s | model single s "
             "| batched MiB | single MiB | single context MiB | timed n (b / s) | best (time) "
             "| chosen | ratio | best (link) | chosen | ratio | single_max |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in paths:
        lines.append(
            f"| {r['d']} | {r['K']} | {r['N']} | {r['n']} | {r['batched_s']:.3g} "
            f"| {r['single_s']:.3g} | {r['predicted_batched_s']:.3g} "
            f"| {r['predicted_single_s']:.3g} | {r['batched_bytes'] / 2**20:.3g} "
            f"| {r['single_bytes'] / 2**20:.3g} | {r['single_context_bytes'] / 2**20:.3g} "
            f"| {r['batched_timed_n']} / {r['single_timed_n']} | {r['best_time']} "
            f"| {r['chosen_time']} | {r['time_ratio']:.2f} | {r['best_link']} "
            f"| {r['chosen_link']} | {r['link_ratio']:.2f} | {r['single_max_path']} |")
    return "\n".join(lines)


def targets(head: list[dict], fit: list[dict], serve: list[dict] = (),
            paths: list[dict] = ()) -> list[tuple[str, str, bool]]:
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
    for r in serve:
        if r["workers"] == 2 and r["path"] == "batched":
            name = f"batched B={r['n']}, d={r['d']}, K={r['K']}, N={r['N']}, 2 workers"
            out.append((f"{name}: ≥ 1.7× the 1-worker throughput (enc + eval + dec)",
                        f"{r['speedup']:.2f}×", r["speedup"] >= 1.7))
            out.append((f"{name}: ≥ 1.7× the 1-worker evaluation throughput",
                        f"{r['evaluate_speedup']:.2f}×", r["evaluate_speedup"] >= 1.7))
            out.append((f"{name}: ≥ 1.7× on free cores (CPU seconds of the busiest process)",
                        f"{r['cpu_speedup']:.2f}×", r["cpu_speedup"] >= 1.7))
        if r["workers"] > 1:
            out.append((f"{r['path']} n={r['n']}, {r['workers']} workers: the 1-worker logits "
                        "(≤ 1e-3 apart)", f"{r['max_abs_diff_vs_1_worker']:.1e}",
                        r["max_abs_diff_vs_1_worker"] <= 1e-3))
    if paths:
        for key, what in (("time_ratio", "time alone"), ("link_ratio", "time + bytes on the link")):
            worst = max(paths, key=lambda r: r[key])
            out.append((f"chosen path within 10 % of the better measured one, {what}, on all "
                        f"{len(paths)} grid points",
                        f"worst {worst[key]:.2f} (d={worst['d']}, K={worst['K']}, N={worst['N']}, "
                        f"n={worst['n']})", worst[key] <= 1.10))
    for r in paths:
        if (r["d"], r["K"], r["n"]) == (768, 5, 100):
            chosen, where = r["chosen_link"], f"N={r['N']}, d=768, K=5, n=100"
            seconds = {"batched": r["batched_s"], "single": r["single_s"]}
            sent = {"batched": r["batched_bytes"], "single": r["single_bytes"]}
            per_query = "; ".join(f"{p} {seconds[p] / 100 * 1e3:.0f} ms, "
                                  f"{sent[p] / 100 / 1024:.0f} KiB per query" for p in seconds)
            out.append((f"{where}: the chosen path ({chosen}) no costlier than the better one, "
                        "time + bytes on the link", f"ratio {r['link_ratio']:.2f} ({per_query})",
                        r["link_ratio"] <= 1.0))
            out.append((f"{where}: … nor in bytes", f"{sent[chosen] / min(sent.values()):.2f}× "
                        "the fewer", sent[chosen] <= min(sent.values())))
            out.append((f"{where}: … nor in time", f"{seconds[chosen] / min(seconds.values()):.2f}× "
                        "the faster", seconds[chosen] <= min(seconds.values())))
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
    parser.add_argument("--fit", type=int, nargs="*", default=[640, 2000],
                        help="numbers of public texts for the fitting benchmark (none: no fitting)")
    parser.add_argument("--fit-dims", type=int, nargs=2, default=[384, 768],
                        metavar=("D_Q", "D_P"), help="querier and provider dimensions of the fit")
    parser.add_argument("--workers", type=int, default=2, help="provider processes for fitting")
    parser.add_argument("--serve-workers", type=int, nargs="*", default=[1, 2],
                        help="processes per side for the serving rows (first: the reference)")
    parser.add_argument("--serve-reps", type=int, default=5, help="repetitions of each serving row")
    parser.add_argument("--serve-single", type=int, default=64,
                        help="queries per single-path serving request (0: none)")
    parser.add_argument("--path-dims", type=int, nargs="*", default=[384, 768, 4096],
                        help="d of the path-choice grid (none: no grid)")
    parser.add_argument("--path-classes", type=int, nargs="+", default=[5, 50])
    parser.add_argument("--path-presets", nargs="+", default=["n8192", "n16384"])
    parser.add_argument("--path-n", type=int, nargs="*", default=[1, 16, 64, 100, 256, 4096],
                        help="queries per request in the path-choice grid")
    parser.add_argument("--path-sample", type=int, default=16,
                        help="most single-path queries timed per grid point (scaled to n)")
    parser.add_argument("--path-reps", type=int, default=1)
    parser.add_argument("--calibrate", action="store_true",
                        help="only time the primitives at --presets and write --cost-model")
    parser.add_argument("--calibrate-reps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--readme", type=Path, default=None,
                        help="also rewrite the bench_crypto block of this README")
    parser.add_argument("--summarize", action="store_true",
                        help="measure nothing: rebuild the plot and the --readme block from the "
                             "CSVs and report already in --out")
    if "--quick" in (sys.argv[1:] if argv is None else argv):  # explicit options still win
        parser.set_defaults(dims=[64, 384], classes=[5], presets=["n8192"], batches=[1, 64, 4096],
                            reps=3, check_queries=2000, fit=[300], serve_reps=2, serve_single=8,
                            path_dims=[64], path_classes=[5], path_presets=["n8192"],
                            path_n=[1, 4096], path_sample=4)
    serve = load_config().serve  # the coordinator's settings that the path grid compares with
    # single_max: the constant rule the cost model replaced (64 queries, tuned at N=8192, d=384).
    parser.set_defaults(cost_model=_conf_path(serve.cost_model), link_mbit_s=serve.link_mbit_s,
                        single_max=64)
    parser.add_argument("--cost-model", type=Path, help="the cost model's JSON (serve.cost_model)")
    parser.add_argument("--link-mbit-s", type=float,
                        help="link that weighs bytes against seconds (serve.link_mbit_s)")
    parser.add_argument("--single-max", type=int, help="the constant rule's threshold, compared")
    return parser.parse_args(argv)


def _conf_path(name: str) -> Path:
    """A path from the config: as given if absolute, else under conf/."""
    path = Path(name).expanduser()
    return path if path.is_absolute() else CONF_DIR / path


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


def loadavg() -> str:
    """The machine's load averages (1, 5, 15 min), as /proc/loadavg gives them."""
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def run_calibration(args: argparse.Namespace, command: str) -> int:
    """Time the primitives at each preset and write the cost model the coordinator loads."""
    before = loadavg()
    calibrations = [calibrate(params_for(p), reps=args.calibrate_reps)
                    for p in tqdm(args.presets, desc="calibrate")]
    model = CostModel(calibrations, about={
        "command": command, "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
        "loadavg_before": before, "loadavg_after": loadavg(),
        "note": "medians of single calls on this machine; seconds per call, bytes exact"})
    args.cost_model.parent.mkdir(parents=True, exist_ok=True)
    model.save(args.cost_model)
    print(calibration_markdown(model))
    print(f"wrote {args.cost_model}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.summarize:
        return summarize(args)
    command = "python -m simulations.bench_crypto " + " ".join(argv if argv is not None
                                                                else sys.argv[1:])
    if args.calibrate:
        return run_calibration(args, command)
    model = CostModel.load(args.cost_model) if args.path_dims and args.path_n else None
    args.out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    # Serving first: the shortest section, and the one most sensitive to other work.
    loads = {"serve_before": loadavg()}
    serve: list[dict] = []
    if len(args.serve_workers) > 1:
        bench = HeadBench(args.dims[0], args.classes[0], args.presets[0], args.seed)
        serve = bench_serve(bench, "batched", max(args.batches), args.serve_workers,
                            args.serve_reps)
        if args.serve_single:
            serve += bench_serve(bench, "single", args.serve_single, args.serve_workers,
                                 args.serve_reps)
    write_csv(args.out / "serve.csv", serve, SERVE_COLUMNS)
    loads["serve_after"] = loadavg()
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
    loads["paths_before"] = loadavg()
    paths = [] if model is None else bench_paths(
        model, args.path_dims, args.path_classes, args.path_presets, args.path_n,
        link_mbit_s=args.link_mbit_s, reps=args.path_reps, sample=args.path_sample,
        single_max=args.single_max, seed=args.seed)
    write_csv(args.out / "paths.csv", paths, PATH_COLUMNS)
    loads["paths_after"] = loadavg()
    load = (f"; 1-min load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after: "
            "other work on the machine slows every row alike")
    report = markdown(head, fit, command, load, serve=serve, paths=paths, model=model,
                      loads=loads, link_mbit_s=args.link_mbit_s, model_path=args.cost_model)
    (args.out / "README.md").write_text(report)
    plot(head, args.out / "crypto.png")
    print(report)
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
