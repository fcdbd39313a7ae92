"""The silos' embeddings of a task's texts, read through the same cache the simulations filled.

The texts are the benchmark preset's (simulations/benchmark.py), listed as the silos embed them
(the same lists, the same encoder fingerprint), so an experiment that runs after the
classification simulations embeds nothing again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conf import load_config
from silos.runtime import embed
from silos.settings import EncoderSpec
from simulations.benchmark import benchmark_rows


def task_texts(task: str, ood: str | None, *, n_public: int, n_private: int, n_query: int,
               n_ood: int, seed: int) -> dict[str, list[str]]:
    """The lists a silo embeds for this task: the public texts, the provider's task data and the
    querier's texts (its OOD texts last)."""
    cfg = load_config([f"dataset.name={task}", f"dataset.n_public={n_public}",
                       f"dataset.n_private={n_private}", f"dataset.n_query={n_query}",
                       f"dataset.ood={ood if ood else 'null'}", f"dataset.n_ood={n_ood}",
                       f"run.seed={seed}"])
    rows, _ = benchmark_rows(cfg)
    return {part: [row["text"] for row in rows[role]]
            for part, role in (("public", "public"), ("private", "task"), ("query", "queries"))}


def encoder_spec(model: str, cache_dir: Path | None = None) -> EncoderSpec:
    """How a silo of ``model`` embeds, with conf/default.yaml's encoder section (as the
    classification simulations ran it); ``cache_dir`` None: its ``run.cache_dir``."""
    cfg = load_config()
    cache_dir = Path(str(cfg.run.cache_dir) if cache_dir is None else cache_dir).expanduser()
    return EncoderSpec.from_config(cfg.encoder, model, cache_dir=cache_dir)


def embed_lists(model: str, lists: dict[str, list[str]], cache_dir: Path) -> dict[str, np.ndarray]:
    cache_dir = Path(cache_dir).expanduser()
    spec = encoder_spec(model, cache_dir)
    return {name: embed(spec, texts, cache_dir) for name, texts in lists.items() if texts}
