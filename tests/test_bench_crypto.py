"""The crypto benchmark runs (small grid) and what it measures is sane."""

import csv

from simulations.bench_crypto import FIT_COLUMNS, HEAD_COLUMNS, PATH_COLUMNS, SERVE_COLUMNS, main


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
    latency = {(int(r["batch"]), r["protection"]): float(r["latency_ms_per_query"])
               for r in head if r["path"] == "batched"}
    # A batched request costs its d feature ciphertexts however many queries they carry: 64
    # queries cost about what one does, so each costs far less (measured: ~60 times).
    assert latency[64, "on"] < latency[1, "on"] / 8, latency
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
    with (out / "serve.csv").open() as f:
        serve = list(csv.DictReader(f))
    assert list(serve[0]) == SERVE_COLUMNS
    assert {(r["path"], r["workers"]) for r in serve} == {(p, w) for p in ("batched", "single")
                                                           for w in ("1", "2")}
    for row in serve:  # two processes give the logits of one
        assert float(row["max_abs_error"]) <= 1e-3 and float(row["max_abs_diff_vs_1_worker"]) <= 1e-3
    with (out / "paths.csv").open() as f:
        paths = list(csv.DictReader(f))
    assert list(paths[0]) == PATH_COLUMNS
    assert [int(r["n"]) for r in paths] == [1, 4096]
    # one query: single, whatever the model; a full group of 4,096: batched
    assert [r["best_time"] for r in paths] == [r["chosen_time"] for r in paths] == ["single",
                                                                                  "batched"]
    report = (out / "README.md").read_text()
    assert "| single | on |" in report
    assert "## Targets" in report and "## Serving over helper processes" in report
    assert "## Path choice" in report


def test_calibration_writes_a_model_the_coordinator_loads(tmp_path):
    from tiny import default_params

    from crypto.cost import CostModel

    path = tmp_path / "cost_model.json"
    assert main(["--calibrate", "--presets", "n8192", "--calibrate-reps", "3",
                 "--cost-model", str(path)]) == 0
    model = CostModel.load(path)
    assert model.about["cpus"] and model.about["command"].endswith(str(path))
    cost = model.cost("batched", 384, 5, 4096, params=default_params())
    assert cost.bytes_up == 384 * model.calibration(default_params()).query_bytes
    params = default_params()
    one = model.cost("batched", 384, 5, 1, params=params)
    assert one.seconds == cost.seconds  # a batched request costs whole groups of N/2 slots
    assert model.cost("single", 384, 5, 1, params=params).seconds < one.seconds / 10
