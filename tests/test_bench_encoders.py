"""The encoder benchmark's core on tiny in-memory models: what it measures is sane."""

import csv

import numpy as np
import pytest
from tiny import encoder_spec, make_tokenizer, tiny_bert, tiny_llama, topic_texts

from silos.data import TextDataset
from silos.encoders import Encoder
from simulations.bench_encoders import (
    ACCURACY_COLUMNS,
    SPEED_COLUMNS,
    VARIANTS,
    Task,
    accuracy,
    measure,
    write_report,
)
from simulations.benchmark import split_corpus


@pytest.fixture(scope="module")
def tiny_task() -> Task:
    texts, labels = topic_texts(240, seed=5)
    names = sorted(set(labels))
    corpus = TextDataset("topics", texts, np.asarray([names.index(x) for x in labels]), names)
    split = split_corpus(len(corpus), n_public=120, n_private=60, n_query=60, seed=0)
    return Task(corpus, split, np.arange(40), holdout=0.2, alphas=(0.01, 1.0, 100.0),
                head_l2=1e-3, head_max_iter=100)


def test_benchmark_core_on_tiny_models(tmp_path, tiny_task):
    tokenizer = make_tokenizer()
    makers = {"q-bert": lambda: tiny_bert(tokenizer, 32, 0), "p-bert": lambda: tiny_bert(tokenizer, 64, 2),
              "p-llama": lambda: tiny_llama(tokenizer)}
    loads = []

    def load(model: str, variant: str) -> Encoder:
        loads.append((model, variant))
        spec = encoder_spec(model, batch_size=16, device="cpu", **VARIANTS[variant])
        return Encoder(makers[model](), tokenizer, spec)

    variants = ["float32", "int8", "bfloat16"]
    speed, embeddings = measure(load, lambda e, t: e.encode(t), tiny_task, models=list(makers),
                                variants=variants, threads=[1, 2],
                                accuracy_variants=["float32", "int8"])
    assert len(loads) == 9  # one load per model and variant
    assert len(speed) == 3 * 3 * 2
    rows = {(r["model"], r["variant"], r["threads"]): r for r in speed}
    for model in makers:
        for threads in (1, 2):
            fp32, int8 = rows[model, "float32", threads], rows[model, "int8", threads]
            assert fp32["speedup_vs_float32"] == 1.0 and fp32["min_cosine_to_float32"] == 1.0
            assert fp32["texts"] == 40
            assert 40 / fp32["texts_per_s"] == pytest.approx(fp32["seconds"], abs=1e-3)  # rounded
            assert int8["speedup_vs_float32"] == pytest.approx(
                int8["texts_per_s"] / fp32["texts_per_s"], abs=0.01)
            assert int8["min_cosine_to_float32"] > 0.99
            assert rows[model, "bfloat16", threads]["min_cosine_to_float32"] < 1.0
    assert rows["p-llama", "int8", 1]["min_cosine_to_float32"] < 1.0  # int8: close, not the same
    assert ("q-bert", "float32", "private") not in embeddings  # the querier has no private texts
    assert embeddings["p-llama", "int8", "query"].shape == (60, 48)

    acc = accuracy(embeddings, tiny_task, querier="q-bert", providers=["p-bert", "p-llama"],
                   variants=["float32", "int8"])
    assert len(acc) == 2 * 4
    fp32 = {r["provider"]: r for r in acc if r["querier_variant"] == r["provider_variant"] == "float32"}
    for row in acc:  # int8 on either side: the map and the head do as well as on float32
        assert row["alpha"] in tiny_task.alphas and row["heldout_r2"] > 0.1
        assert abs(row["aligned_accuracy"] - fp32[row["provider"]]["aligned_accuracy"]) <= 0.1
    # The topic words make these texts separable even through random tiny models: well above
    # chance (1/3), so a broken map or head shows.
    assert all(r["native_accuracy"] > 0.6 and r["aligned_accuracy"] > 0.5 for r in fp32.values())

    out = tmp_path / "encoders"
    meta = {"command": "test", "machine": "test", "torch": "x", "load_before": "0 0 0",
            "load_after": "0 0 0", "wall_s": 1.0, "n_speed": 40, "corpus": "topics",
            "max_length": 64, "batch_size": 16, "reps": 1, "seed": 0}
    write_report(out, speed, acc, meta)
    with (out / "speed.csv").open() as f:
        assert list(next(csv.DictReader(f))) == SPEED_COLUMNS
    with (out / "accuracy.csv").open() as f:
        assert len(list(csv.DictReader(f, ACCURACY_COLUMNS))) == 1 + 8
    report = (out / "report.md").read_text()
    assert "## Aligned accuracy" in report and "Load average" in report
    pytest.importorskip("matplotlib")
    assert (out / "speed.png").stat().st_size > 1000
