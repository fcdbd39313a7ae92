"""The silos' embeddings of a task's texts, read through the same cache the simulations filled.

Specs are built exactly as a silo builds them (same corpus split, same encoder fingerprint), so an
experiment that runs after the classification simulations embeds nothing again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conf import load_config
from silos.embedding_cache import encode_cached
from silos.runtime import load_benchmark, load_encoder, load_ood_texts
from silos.settings import CorpusSpec, EncoderSpec


def corpus_spec(task: str, ood: str | None, *, n_public: int, n_private: int, n_query: int,
                n_ood: int, seed: int) -> CorpusSpec:
    defaults = load_config()
    return CorpusSpec(name=task, n_public=n_public, n_private=n_private, n_query=n_query,
                      seed=seed, holdout=float(defaults.alignment.holdout), ood=ood, n_ood=n_ood)


def encoder_spec(model: str) -> EncoderSpec:
    encoder = load_config().encoder
    return EncoderSpec(model=model, pooling=str(encoder.pooling), max_length=int(encoder.max_length),
                       batch_size=int(encoder.batch_size), normalize=bool(encoder.normalize))


def task_texts(spec: CorpusSpec) -> dict[str, list[str]]:
    """The lists a silo embeds for this task: public, private, query and OOD texts."""
    corpus, split = load_benchmark(spec)
    return {part: [corpus.texts[i] for i in getattr(split, part)]
            for part in ("public", "private", "query")} | {"ood": list(load_ood_texts(spec))}


def embed_lists(model: str, lists: dict[str, list[str]], cache_dir: Path) -> dict[str, np.ndarray]:
    encoder = load_encoder(encoder_spec(model), Path(cache_dir).expanduser())
    return {name: encode_cached(encoder, texts, cache_dir) for name, texts in lists.items() if texts}
