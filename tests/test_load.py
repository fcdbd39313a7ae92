"""Load: 10,000 encrypted queries through the simulation in batches — all answered, predictions
identical to plaintext, each silo's peak memory per message reported and flat across batches."""

import json
import time

from test_simulation import spying_server_app
from tiny import tiny_overrides

from silos.client_app import app as client_app
from simulations.engine import simulate
from simulations.report import build_report, memory_by_silo

N_QUERIES, BATCH = 10_000, 500


def test_ten_thousand_encrypted_queries_in_batches(tmp_path):
    overrides = [*tiny_overrides(tmp_path, n_texts=N_QUERIES + 200, n_public=120, n_private=80,
                                 n_query=N_QUERIES),
                 "silos.carol=null", f"serve.batch_size={BATCH}",
                 "encoder.batch_size=256", "encoder.max_length=16"]  # short synthetic texts
    started = time.perf_counter()
    simulate(spying_server_app([]), client_app, num_silos=2, overrides=overrides)
    seconds = time.perf_counter() - started
    out = tmp_path / "out"
    report = build_report(out, json.loads((out / "run.json").read_text()), "pytest")
    (pair,) = report["pairs"]
    assert pair["status"] == "ok", pair.get("error")
    assert pair["n_queries"] == N_QUERIES and pair["path"] == "batched"
    assert pair["agreement"] == 1.0 and pair["max_abs_error"] <= 1e-3
    assert pair["encrypted_accuracy"] == pair["aligned_accuracy"]

    memory = memory_by_silo(out)
    batches = N_QUERIES // BATCH
    quarter = batches // 4
    retained = pair["bytes_in_per_query"] * BATCH * (batches - quarter) / 2**20
    # Pipelined: after the first batch, the querier decrypts batch b and encrypts b+1 in one
    # message (the last one decrypts and reports).
    streamed = (("alice", "decrypt+encrypt", batches - 1), ("bob", "evaluate", batches))
    for silo, action, count in streamed:
        peaks = memory[silo]["per_message"][action]
        growth = memory[silo]["growth_per_message"][action]
        assert len(peaks) == len(growth) == count
        # A message's own working memory is the same in the last batches as in the first ...
        assert max(growth[-quarter:]) <= max(growth[:quarter]) + 4, (silo, action, growth)
        # ... and the process does not keep what it handled: keeping the query ciphertexts of
        # the batches in between would add `retained` MiB; allocator noise stays far below.
        assert max(peaks[-quarter:]) - max(peaks[:quarter]) < retained / 2, (silo, action, peaks)
    drift = {f"{s} {a}": round(max(memory[s]["per_message"][a][-quarter:])
                               - max(memory[s]["per_message"][a][:quarter]), 1)
             for s, a, _ in streamed}
    print(f"\n10,000 queries in {batches} batches of {BATCH}: {seconds:.1f} s wall; "
          f"serve {pair['seconds']['serve']:.1f} s ({pair['wall_ms_per_query']:.2f} ms/query wall, "
          f"{pair['latency_ms_per_query']:.2f} compute); peak RSS MiB "
          + ", ".join(f"{s}: {m['peak_rss_mib']}" for s, m in memory.items())
          + f"; last-quarter minus first-quarter peak, MiB: {drift} (bound {retained / 2:.0f})")
    text = (out / "report.md").read_text()  # what a reader of the report is told, per silo
    for silo, figures in memory.items():
        assert f"{silo} {figures['peak_rss_mib']:.0f} (" in text, silo


