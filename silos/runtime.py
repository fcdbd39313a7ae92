"""Per-process caches of what is slow to load: encoders and data sources.

These are caches, not node state: a Flower worker process may run several silos in turn, and a
result never depends on whether an entry was cached. Node state lives in ``context.state``.

A source that cannot load as configured is refused with the config key to change (``key``): the
simulation CLI loads every source here before any worker starts; a deployed silo says so in its
error.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from silos.alignment import public_parts, scale_of
from silos.data import DataSource, TextTable, read_table, restated_as_config_keys
from silos.embedding_cache import cached_embeddings, encode_cached
from silos.registry import resolve_model
from silos.settings import EncoderSpec, SiloSettings

if TYPE_CHECKING:
    from silos.encoders import Encoder


def open_encoder(spec: EncoderSpec, cache_dir: Path) -> Encoder:
    """The encoder of ``spec``, loaded now (a benchmark loads each variant once, and lets it go)."""
    from silos.encoders import Encoder  # torch + transformers: imported by the messages that embed

    resolved = resolve_model(spec.model, cache_dir=cache_dir)
    return Encoder.from_pretrained(resolved.path, spec, causal=resolved.causal)


@lru_cache(maxsize=4)
def load_encoder(spec: EncoderSpec, cache_dir: Path) -> Encoder:
    """:func:`open_encoder`, kept for the process's next message."""
    return open_encoder(spec, cache_dir)


def embed(spec: EncoderSpec, texts: Sequence[str], cache_dir: Path) -> np.ndarray:
    """The embeddings of ``texts``: from the on-disk cache if there, without loading the LM."""
    cached = cached_embeddings(spec.fingerprint, texts, cache_dir)
    if cached is not None:
        return cached
    return encode_cached(load_encoder(spec, cache_dir), texts, cache_dir)


@lru_cache(maxsize=8)
def load_source(source: DataSource | None, key: str, *, labels: str = "required") -> TextTable:
    """The rows of a data role, its errors restated as the config key to change (``key``: e.g.
    ``public``, ``silos.bob.tasks.news``). ``labels``: ``required`` (a task's data), ``optional``
    (a querier's texts: all rows kept, a missing label column means unlabelled) or ``none``."""
    if source is None:
        raise ValueError(f"{key}.source is not set: name the data (a packaged corpus, a CSV, JSONL "
                         "or text file, or a Hugging Face dataset id), or run the benchmark preset "
                         "(python -m simulations.run_local with public.source=null)")
    if labels == "none":
        source = DataSource(source.source, source.text_column, None, source.id_column,
                            source.hf_split)
    columns = {source.id_column: f"{key}.id_column", source.label_column: f"{key}.label_column",
               source.text_column: f"{key}.text_column"}  # the text column's key wins a tie
    with restated_as_config_keys(source.source, f"{key}.source", columns):
        table = read_table(source, optional_labels=labels == "optional",
                           drop_empty=labels != "optional")
    if not len(table):
        raise ValueError(f"{key}.source={source.source} holds no texts")
    if labels == "required" and len(set(table.labels or [])) < 2:
        raise ValueError(f"{key}.source={source.source}: a task needs at least two classes, "
                         f"got {sorted(set(table.labels or []))}")
    return table


def public_texts(settings: SiloSettings) -> TextTable:
    """The silo's copy of the shared public corpus (its texts only: no labels are read)."""
    return load_source(settings.public, "public", labels="none")


def query_texts(settings: SiloSettings) -> TextTable:
    """A querier's own texts (every row kept, labels where it has them)."""
    return load_source(settings.queries, f"silos.{settings.name}.queries", labels="optional")


def querier_task(settings: SiloSettings) -> str:
    """The task a querier asks the providers for."""
    if settings.task is None:
        raise ValueError(f"silos.{settings.name}.task is not set: name the task this querier "
                         "asks the providers for")
    return settings.task


def task_tables(settings: SiloSettings) -> dict[str, TextTable]:
    """A provider's labelled data, per task it offers."""
    if not settings.tasks:
        raise ValueError(f"provider {settings.name!r} offers no task: set silos.{settings.name}."
                         "tasks.NAME.source to its labelled data")
    return {task: load_source(source, f"silos.{settings.name}.tasks.{task}")
            for task, source in settings.tasks}


def public_space(settings: SiloSettings) -> dict[str, np.ndarray]:
    """A silo's embeddings of the public texts in its own scaled space (over its largest
    |coordinate| there, ``scale``), cut into the part that fits a map (``fit``) and the held-out
    part that scores it (``val``): the same cut on both silos of a pair."""
    public = embed(settings.encoder, public_texts(settings).texts, settings.cache_dir)
    scale = scale_of(public)
    fit, val = public_parts(len(public), holdout=settings.holdout, seed=settings.seed)
    return {"fit": public[fit] / scale, "val": public[val] / scale, "scale": np.array([scale])}
