"""Per-process caches of what is slow to load: encoders and corpora.

These are caches, not node state: a Flower worker process may run several silos in turn, and a
result never depends on whether an entry was cached. Node state lives in ``context.state``.

A corpus that cannot load or split as configured is refused with the ``dataset.*`` key to change:
the simulation CLI loads it here before any worker starts; a deployed silo says so in its error.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from silos.data import (
    PACKAGED_DATASETS,
    MissingColumnError,
    Split,
    TextDataset,
    load_corpus,
    split_corpus,
)
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


def configured_corpus(name: str, key: str, *, text_column: str = "text",
                      label_column: str = "label", hf_split: str = "train") -> TextDataset:
    """``load_corpus``, its errors restated as the config key to change: ``key`` names the corpus
    (``dataset.name`` or ``dataset.ood``), ``dataset.text_column`` / ``label_column`` its columns."""
    try:
        return load_corpus(name, text_column=text_column, label_column=label_column,
                           hf_split=hf_split)
    except MissingColumnError as err:
        column_key = ("dataset.text_column" if err.column == text_column
                      else "dataset.label_column")
        raise ValueError(f"{column_key}={err.column}: {name} has no column {err.column!r}; its "
                         f"columns are {err.columns}: set {column_key} to one of them") from None
    except (FileNotFoundError, ConnectionError) as err:
        what = ("no such CSV file here" if name.endswith(".csv")
                else f"no packaged corpus, CSV file or reachable Hugging Face dataset ({err})")
        where = " (a deployed silo: dataset= in its --node-config)" if key == "dataset.name" else ""
        raise ValueError(f"{key}={name}: {what}; set {key}{where} to a packaged corpus "
                         f"({', '.join(PACKAGED_DATASETS)}), the path of a CSV file, or a Hugging "
                         "Face dataset id") from None


@lru_cache(maxsize=4)
def load_benchmark(spec: CorpusSpec) -> tuple[TextDataset, Split]:
    corpus = configured_corpus(spec.name, "dataset.name", text_column=spec.text_column,
                               label_column=spec.label_column, hf_split=spec.hf_split)
    sizes = {"n_public": spec.n_public, "n_private": spec.n_private, "n_query": spec.n_query}
    stated = " + ".join(f"dataset.{k}={v}" for k, v in sizes.items())
    if min(sizes.values()) < 1:
        raise ValueError(f"{stated}: each must be at least 1")
    if sum(sizes.values()) > len(corpus):
        raise ValueError(f"{stated} = {sum(sizes.values()):,} texts, but the corpus {spec.name!r} "
                         f"has {len(corpus):,}; lower dataset.n_public, n_private or n_query")
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
    corpus = configured_corpus(spec.ood, "dataset.ood")
    if spec.n_ood > len(corpus):
        raise ValueError(f"dataset.n_ood={spec.n_ood} but {spec.ood!r} has {len(corpus):,} texts; "
                         "lower dataset.n_ood")
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
