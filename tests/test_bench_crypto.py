"""The crypto benchmark runs (small grid) and what it measures is sane."""

import csv

from simulations.bench_crypto import FIT_COLUMNS, HEAD_COLUMNS, main


def test_quick_benchmark_writes_sane_results(tmp_path):
    out = tmp_path / "bench"
    assert main(["--quick", "--out", str(out), "--dims", "40", "--batches", "1", "64",
                 "--reps", "2", "--check-queries", "300", "--fit", "120", "--fit-dims", "24", "40",
                 "--workers", "1"]) == 0
    with (out / "head.csv").open() as f:
        head = list(csv.DictReader(f))
    assert list(head[0]) == HEAD_COLUMNS
    assert {r["path"] for r in head} == {"plaintext", "naive", "dot", "single", "batched"}
    for row in head:
        assert float(row["max_abs_error"]) <= 1e-3, row
        assert float(row["argmax_agreement"]) == 1.0, row
        assert float(row["latency_ms_per_query"]) > 0
    single = next(r for r in head if r["path"] == "single" and r["protection"] == "on")
    assert int(single["n_checked"]) == 300
    batched = [r for r in head if r["path"] == "batched"]
    # The batched context: parameters and the public key (~0.5 MiB), no Galois keys; the single
    # path's adds a Galois key per rotation step (~0.75 MiB each).
    assert all(float(r["context_bytes"]) < 2**20 for r in batched)
    assert float(single["context_bytes"]) > 4 * float(batched[0]["context_bytes"])
    assert {r["protection"] for r in head if r["path"] in ("single", "batched")} == {"on", "off"}
    naive = next(r for r in head if r["path"] == "naive")
    assert float(single["ratio_to_naive"]) < 1.0 and float(naive["ratio_to_naive"]) == 1.0
    with (out / "fit.csv").open() as f:
        (fit,) = list(csv.DictReader(f))
    assert list(fit) == FIT_COLUMNS
    assert float(fit["map_relative_error"]) <= 1e-4
    assert (out / "crypto.png").stat().st_size > 10_000
    assert "| single | on |" in (out / "README.md").read_text()
    assert "## Targets" in (out / "README.md").read_text()
