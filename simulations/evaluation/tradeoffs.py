"""Experiment 5: what privacy costs — CKKS presets × query scales × dims × head paths, and baselines.

Each encrypted configuration is measured by the crypto benchmark's ``HeadBench`` (encrypt +
evaluate + decrypt + serialisation, against float64). Baselines: ``plaintext`` (no privacy: the
querier holds the head) and ``clear`` (the querier sends its aligned embeddings in the clear and
gets logits back: the provider's head stays private, the querier's data does not).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from crypto.params import InsecureParametersError
from simulations.bench_crypto import HeadBench, params_for


def clear_row(d: int, k: int, batch: int, reps: int, seed: int) -> dict:
    """Embeddings and logits as float32 bytes over the wire; the head in float64 at the provider."""
    rng = np.random.default_rng(seed)
    V, c = rng.normal(size=(d, k)) / np.sqrt(d), rng.normal(size=k)
    Z = rng.uniform(-1, 1, size=(batch, d)).astype(np.float32)
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        sent = Z.tobytes()
        received = (np.frombuffer(sent, np.float32).reshape(batch, d) @ V + c).astype(
            np.float32).tobytes()
        np.frombuffer(received, np.float32)
        times.append(time.perf_counter() - started)
    return {"path": "clear", "d": d, "batch": batch, "security_bits": 0,
            "latency_ms_per_query": 1e3 * float(np.median(times)) / batch,
            "bytes_per_query": (len(sent) + len(received)) / batch, "context_bytes": 0,
            "max_abs_error": 0.0, "argmax_agreement": 1.0}


def tradeoff_rows(*, presets: list[str], input_scale_bits: list[int], dims: list[int], classes: int,
                  batch: int, reps: int, seed: int) -> tuple[list[dict], list[dict]]:
    """The measured configurations, and those the provider refuses (a query scale too low for
    the flooding it adds on that path: the refusal is where the trade-off ends)."""
    rows, refused = [], []
    for d in dims:
        bench = HeadBench(d, classes, presets[0], seed)
        plain = bench.plaintext(reps)
        rows.append({"path": "plaintext", "d": d, "batch": plain["batch"], "security_bits": 0,
                     "latency_ms_per_query": plain["latency_ms_per_query"], "bytes_per_query": 0,
                     "context_bytes": 0, "max_abs_error": 0.0, "argmax_agreement": 1.0})
        rows.append(clear_row(d, classes, batch, reps, seed))
        for preset in presets:
            for bits in input_scale_bits:
                params = dataclasses.replace(params_for(preset), input_scale_bits=bits).check()
                bench = HeadBench(d, classes, preset, seed, params=params)
                for path in ("single", "batched"):
                    try:
                        measured = (bench.single(reps) if path == "single"
                                    else bench.batched(batch, reps))
                    except InsecureParametersError as err:  # a point of the trade-off itself
                        refused.append({"path": path, "d": d, "preset": preset,
                                        "input_scale_bits": bits, "reason": str(err)})
                        continue
                    rows.append({
                        "path": measured["path"], "d": d, "batch": measured["batch"],
                        "preset": preset, "N": params.poly_modulus_degree,
                        "coeff_mod_bit_sizes": "-".join(map(str, params.coeff_mod_bit_sizes)),
                        "log_q": params.log_q, "security_bits": params.security_bits,
                        "input_scale_bits": bits,
                        "latency_ms_per_query": measured["latency_ms_per_query"],
                        "bytes_per_query": measured["bytes_in_per_query"]
                        + measured["bytes_out_per_query"],
                        "context_bytes": measured["context_bytes"],
                        "max_abs_error": measured["max_abs_error"],
                        "argmax_agreement": measured["argmax_agreement"],
                    })
    mark_pareto(rows)
    return rows, refused


def mark_pareto(rows: list[dict]) -> None:
    """``pareto``: no other row (same d) is at least as fast, as secure and as exact, and better in one."""
    def key(r: dict) -> tuple[float, float, float]:
        return (r["latency_ms_per_query"], -r["security_bits"], r["max_abs_error"])

    for row in rows:
        mine = key(row)
        row["pareto"] = not any(
            other is not row and other["d"] == row["d"]
            and all(o <= m for o, m in zip(key(other), mine, strict=True))
            and key(other) != mine
            for other in rows)
