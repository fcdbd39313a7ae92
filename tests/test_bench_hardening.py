"""The hardening benchmark runs on synthetic data and what it measures is sane."""

import csv

from simulations.bench_hardening import (
    BUDGET_COLUMNS,
    EXTRACTION_COLUMNS,
    HARDENING_COLUMNS,
    main,
)


def test_hardening_benchmark_on_synthetic_data(tmp_path):
    out = tmp_path / "hardening"
    assert main(["--synthetic", "--out", str(out), "--noise", "0.5", "--top-k", "1",
                 "--decimals", "0", "--budgets", "0.5", "1", "10", "--reps", "1",
                 "--attack-queries", "4"]) == 0
    with (out / "hardening.csv").open() as f:
        rows = {r["option"]: r for r in csv.DictReader(f)}
    assert list(next(iter(rows.values()))) == HARDENING_COLUMNS
    assert set(rows) == {"none", "noise std 0.5", "top-1", "round to 0 decimals"}
    assert float(rows["none"]["agreement_with_unhardened"]) == 1.0
    assert float(rows["top-1"]["agreement_with_unhardened"]) == 1.0  # top-k keeps the argmax
    assert float(rows["noise std 0.5"]["agreement_with_unhardened"]) < 1.0
    with (out / "budget.csv").open() as f:
        budget = list(csv.DictReader(f))
    assert list(budget[0]) == BUDGET_COLUMNS
    unlimited, half = budget
    # 600 queries in 4 batched requests, each charged a whole group of 4,096 slots: with no limit
    # all are answered; a budget of half the slots answers the first two and refuses the others.
    assert (unlimited["query_budget"], unlimited["refused_requests"]) == ("unlimited", "0")
    assert unlimited["answered_queries"] == "600" and unlimited["slots_charged"] == "16384"
    assert (half["query_budget"], half["answered_requests"], half["refused_requests"]) == (
        "8192", "2", "2")
    assert half["answered_queries"] == "300" and half["slots_charged"] == "8192"
    assert float(half["encrypted_accuracy_answered"]) > 0.5  # 4 classes: the head still works
    assert "## The query budget" in (out / "README.md").read_text()
    with (out / "extraction.csv").open() as f:
        extraction = list(csv.DictReader(f))
    assert list(extraction[0]) == EXTRACTION_COLUMNS
    exact = {(float(r["noise_std"]), float(r["budget_over_d"])): float(r["relative_error"])
             for r in extraction}
    assert exact[0.0, 1.0] < 1e-8  # d + 1 noiseless logits determine the head
    assert exact[0.0, 0.49] > 0.1  # fewer do not
    assert exact[0.5, 10.0] > 1e-3  # noise makes every extraction approximate
    assert "## Extraction" in (out / "README.md").read_text()
    # The ciphertext attacks on the same head, before and after the reply protection.
    with (out / "attacks.csv").open() as f:
        attacks = {(r["attack"], r["protection"], float(r["logit_noise"])): r
                   for r in csv.DictReader(f)}
    assert attacks["c1 solve", "off", 0.0]["queries_needed"] == "1"
    assert attacks["noise solve", "off", 0.0]["queries_needed"] == "1"
    for attack in ("c1 solve", "noise solve"):
        assert attacks[attack, "default", 0.0]["queries_needed"] == ""  # not reached
    assert attacks["slot solve", "off", 0.0]["queries_needed"] != ""
    assert attacks["slot solve", "default", 0.0]["queries_needed"] == ""
    assert "## Attacks on the ciphertexts" in (out / "README.md").read_text()
