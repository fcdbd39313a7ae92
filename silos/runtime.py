"""Per-process caches of what is slow to load: encoders and corpora.

These are caches, not node state: a Flower worker process may run several silos in turn, and a
result never depends on whether an entry was cached. Node state lives in ``context.state``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from silos.data import Split, TextDataset, load_corpus, split_corpus
from silos.embedding_cache import encode_cached
from silos.ood import OOD_LABEL, class_map
from silos.registry import resolve_model
from silos.settings import CorpusSpec, EncoderSpec

if TYPE_CHECKING:
    from silos.encoders import Encoder


@lru_cache(maxsize=4)
def load_encoder(spec: EncoderSpec, cache_dir: Path) -> Encoder:
    from silos.encoders import Encoder  # torch + transformers: imported by the messages that embed

    resolved = resolve_model(spec.model, cache_dir=cache_dir)
    return Encoder.from_pretrained(
        resolved.path,
        causal=resolved.causal,
        name=spec.model,
        pooling=spec.pooling,
        max_length=spec.max_length,
        batch_size=spec.batch_size,
        normalize=spec.normalize,
    )


@lru_cache(maxsize=4)
def load_benchmark(spec: CorpusSpec) -> tuple[TextDataset, Split]:
    corpus = load_corpus(
        spec.name,
        text_column=spec.text_column,
        label_column=spec.label_column,
        hf_split=spec.hf_split,
    )
    split = split_corpus(
        len(corpus),
        n_public=spec.n_public,
        n_private=spec.n_private,
        n_query=spec.n_query,
        seed=spec.seed,
    )
    return corpus, split


@lru_cache(maxsize=4)
def load_ood_texts(spec: CorpusSpec) -> tuple[str, ...]:
    """The out-of-distribution queries: ``spec.n_ood`` texts of ``spec.ood``, a seeded sample."""
    if not spec.n_ood:
        return ()
    if spec.ood is None or spec.ood == spec.name:
        raise ValueError(f"dataset.n_ood={spec.n_ood} needs dataset.ood, a corpus other than "
                         f"{spec.name!r}")
    corpus = load_corpus(spec.ood)
    if spec.n_ood > len(corpus):
        raise ValueError(f"dataset.n_ood={spec.n_ood} but {spec.ood!r} has {len(corpus)} texts")
    chosen = np.sort(np.random.default_rng(spec.seed + 2).permutation(len(corpus))[: spec.n_ood])
    return tuple(corpus.texts[i] for i in chosen)


def embed_queries(encoder: Encoder, spec: CorpusSpec, cache_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The benchmark's queries, embedded: the query split with its corpus labels (``OOD_LABEL``
    for held-out classes), then the OOD texts of another corpus (``OOD_LABEL``). The querier
    embeds them to query; the provider the same set, for its native scores."""
    corpus, split = load_benchmark(spec)
    x = encode_cached(encoder, [corpus.texts[i] for i in split.query], cache_dir)
    labels = corpus.labels[split.query]
    _, remap = class_map(corpus.label_names, spec.holdout_classes)
    labels = np.where(remap[labels] == OOD_LABEL, OOD_LABEL, labels)
    ood = load_ood_texts(spec)
    if ood:
        x = np.vstack([x, encode_cached(encoder, list(ood), cache_dir)])
        labels = np.concatenate([labels, np.full(len(ood), OOD_LABEL)])
    return x, labels
