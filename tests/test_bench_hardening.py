"""The hardening benchmark runs on synthetic data and what it measures is sane."""

import csv

from simulations.bench_hardening import EXTRACTION_COLUMNS, HARDENING_COLUMNS, main


def test_hardening_benchmark_on_synthetic_data(tmp_path):
    out = tmp_path / "hardening"
    assert main(["--synthetic", "--out", str(out), "--noise", "0.5", "--top-k", "1",
                 "--decimals", "0", "--budgets", "0.5", "1", "10", "--reps", "1",
                 "--attack-queries", "4"]) == 0
    with (out / "hardening.csv").open() as f:
        rows = {r["option"]: r for r in csv.DictReader(f)}
    assert list(next(iter(rows.values()))) == HARDENING_COLUMNS
    assert set(rows) == {"none", "noise std 0.5", "top-1", "round to 0 decimals",
                         "query budget, charged to its limit"}
    assert float(rows["none"]["agreement_with_unhardened"]) == 1.0
    assert float(rows["top-1"]["agreement_with_unhardened"]) == 1.0  # top-k keeps the argmax
    assert float(rows["noise std 0.5"]["agreement_with_unhardened"]) < 1.0
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
