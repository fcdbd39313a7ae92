"""The evaluation suite: its metrics on synthetic data, and its --quick run on the packaged models."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from silos.ood import auroc, fpr_at_tpr, ood_metrics
from simulations.evaluate import load_evaluation_config
from simulations.evaluation.convergence import ProcrustesMap, convergence_rows, linear_cka
from simulations.evaluation.generation import pair_positions
from simulations.evaluation.tradeoffs import mark_pareto


def test_linear_cka_is_one_for_rotated_scaled_copies_and_low_for_noise():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 20))
    Q, _ = np.linalg.qr(rng.normal(size=(20, 20)))
    assert linear_cka(X, 3.0 * X @ Q + 1.0) == pytest.approx(1.0)
    assert linear_cka(X, rng.normal(size=(300, 30))) < 0.2


def test_procrustes_recovers_a_rotation_and_scale_across_dimensions():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 6))
    Q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    Y = 2.0 * np.pad(X, ((0, 0), (0, 2))) @ Q + 0.5  # 6-d into 8-d
    fitted = ProcrustesMap().fit(X, Y)
    np.testing.assert_allclose(fitted.transform(X), Y, atol=1e-9)
    assert fitted.scale_ == pytest.approx(2.0)


def test_convergence_rows_improve_with_more_public_texts():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(700, 16))
    Y = X @ rng.normal(size=(16, 12)) + 0.3 * rng.normal(size=(700, 12))
    rows = convergence_rows({"a": X, "b": Y}, sizes=[20, 500], n_test=100,
                            methods=["ridge", "lstsq", "procrustes"], ridge_alphas=[0.01, 1.0],
                            seed=0)
    assert len(rows) == 2 * 2 * 3  # both directions × sizes × methods
    ridge = {r["n_public"]: r for r in rows if r["method"] == "ridge" and r["model_a"] == "a"}
    assert ridge[500]["r2"] > ridge[20]["r2"] and ridge[500]["r2"] > 0.8
    assert ridge[500]["top1_retrieval"] > 0.9
    for r in rows:  # a related space: every method maps most test texts onto their counterpart
        assert r["cosine"] > 0.6 and r["top1_retrieval"] > 0.7, r
    unrelated = convergence_rows({"a": X, "b": rng.normal(size=(700, 12))}, sizes=[500],
                                 n_test=100, methods=["ridge", "lstsq", "procrustes"],
                                 ridge_alphas=[0.01, 1.0], seed=0)
    for r in unrelated:  # noise: nothing to map, retrieval at chance (1 in 100)
        assert abs(r["cosine"]) < 0.1 and r["top1_retrieval"] < 0.1 and r["cka"] < 0.1, r


def test_token_positions_pair_by_character_offsets():
    # A: "The| quick|brown"  B: "<bos>|The| qu|ick|brown"
    a = np.array([[0, 3], [3, 9], [9, 14]])
    b = np.array([[0, 0], [0, 3], [3, 6], [6, 9], [9, 14]])
    ia, ib, same = pair_positions(a, b)
    assert ia.tolist() == [0, 1, 2] and ib.tolist() == [1, 3, 4]
    assert same.tolist() == [True, False, True]  # " quick" is split differently by B


def test_ood_metrics_agree_with_their_definitions():
    rng = np.random.default_rng(3)
    inside, outside = rng.normal(1, 1, 300), rng.normal(0, 1, 200)
    brute = np.mean(inside[:, None] > outside[None]) + 0.5 * np.mean(inside[:, None] == outside[None])
    assert auroc(inside, outside) == pytest.approx(brute)
    threshold = np.sort(inside)[int(np.floor(0.05 * (len(inside) - 1)))]
    assert fpr_at_tpr(inside, outside) == pytest.approx(np.mean(outside >= threshold))
    # Confident logits for in-distribution, flat ones for OOD: every score separates them.
    logits = np.vstack([np.eye(4)[rng.integers(0, 4, 50)] * 8, rng.normal(0, 0.1, (50, 4))])
    truth = np.r_[np.zeros(50), -np.ones(50)]
    metrics = ood_metrics(logits, truth)
    assert all(metrics[f"auroc_{s}"] == 1.0 for s in ("msp", "energy", "max_logit"))


def test_pareto_front_keeps_only_undominated_rows():
    rows = [{"d": 8, "latency_ms_per_query": 1.0, "security_bits": 0, "max_abs_error": 0.0},
            {"d": 8, "latency_ms_per_query": 10.0, "security_bits": 128, "max_abs_error": 1e-5},
            {"d": 8, "latency_ms_per_query": 20.0, "security_bits": 128, "max_abs_error": 1e-5},
            {"d": 8, "latency_ms_per_query": 30.0, "security_bits": 256, "max_abs_error": 1e-5}]
    mark_pareto(rows)
    assert [r["pareto"] for r in rows] == [True, True, False, True]


def test_quick_config_drops_a_task_and_unknown_keys_are_refused():
    cfg = load_evaluation_config([], quick=True)
    assert [t for t, spec in cfg.classification.tasks.items() if spec is not None] == ["bbc-news"]
    assert load_evaluation_config(["models=[a,b]"], quick=False).models == ["a", "b"]
    with pytest.raises(KeyError, match="unknown config key 'modles'"):
        load_evaluation_config(["modles=[a]"], quick=False)
    with pytest.raises(KeyError, match=r"unknown config key 'classification\.n_publc'"):
        load_evaluation_config(["classification.n_publc=5"], quick=True)
    tasks = load_evaluation_config(["classification.tasks.news={dataset: bbc-news}"], quick=True)
    assert "news" in tasks.classification.tasks  # a task of the user's own: a new name


@pytest.mark.slow
def test_quick_suite_writes_sane_reports(tmp_path):
    """`python -m simulations.evaluate --quick`: every experiment, through the product, < 8 min."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "simulations.evaluate", "--quick", f"output_dir={tmp_path / 'r'}",
         f"runs_dir={tmp_path / 'runs'}"],
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}, capture_output=True, text=True,
        timeout=900)
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "r"
    for name in ("README.md", "summary.json", "classification.png", "ood.png", "convergence.png",
                 "tradeoffs.png", "classification.csv", "convergence.csv"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert {(r["querier_model"], r["provider_model"]) for r in summary["classification"]} == {
        ("minilm-l6", "smollm2-135m"), ("smollm2-135m", "minilm-l6")}
    for row in summary["classification"]:  # BBC News, 5 topics: chance is 0.2
        assert row["status"] == "ok"
        # Each head classifies its own model's embeddings; through the map the provider's head
        # classifies the querier's (full suite: 0.89-0.95); without it, near chance (0.14-0.30).
        assert row["native_accuracy"] > 0.7 and row["querier_own_accuracy"] > 0.7, row
        assert row["aligned_accuracy"] > 0.5 and row["unaligned_accuracy"] < 0.45, row
        assert row["agreement"] == 1.0 and row["max_abs_error"] <= 1e-3
        assert row["encrypted_accuracy"] == row["aligned_accuracy"]
    assert len(summary["ood"]) == 2 * 3
    for row in summary["ood"]:
        assert row["auroc_encrypted"] == pytest.approx(row["auroc_aligned"], abs=0.02)
        if row["score"] == "msp":  # tweets among news: told apart better than chance (full: 0.74+)
            assert row["auroc_aligned"] > 0.6, row
    assert {r["method"] for r in summary["convergence"]} == {"ridge", "lstsq", "procrustes"}
    largest = max(r["n_public"] for r in summary["convergence"])
    for row in summary["convergence"]:  # chance: 1 in n_test texts retrieved
        if row["method"] == "ridge" and row["n_public"] == largest:
            assert row["top1_retrieval"] > 2 / summary["config"]["convergence"]["n_test"], row
    generation = summary["generation"]
    # The quick run maps SmolLM2 onto itself: the map must reproduce its own predictions.
    assert generation["tokenizer_match_rate"] == 1.0
    assert generation["top1_agreement"] >= 0.95
    assert generation["encrypted_head"]["slice_max_relative_error"] <= 1e-3
    for row in summary["tradeoffs"]:
        assert row["max_abs_error"] <= 1e-3 and row["argmax_agreement"] == 1.0
    assert "| bbc-news | minilm-l6 → smollm2-135m |" in (out / "README.md").read_text()
    # 319 s at load ~2 since the replies are protected: each encrypted fit is one feature per
    # ciphertext on three primes (~1 min per pair, docs/performance.md); the bound leaves room.
    assert seconds < 480, f"--quick took {seconds:.0f} s"


def test_convergence_sizes_end_at_the_available_texts():
    from simulations.evaluation.convergence import usable_sizes

    assert usable_sizes([100, 500, 5000], 1243) == [100, 500, 1243]
    assert usable_sizes([100, 500], 1243) == [100, 500]
