"""On-disk cache of embeddings, keyed by encoder fingerprint and the texts' hash: reruns skip the LM."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from safetensors.numpy import load_file

from silos.saving import atomic_save_file

if TYPE_CHECKING:  # torch + transformers take ~4 s to import; only `prepare` needs them
    from silos.encoders import Encoder


# How silos.encoders quantises, by encoder.quantize value: a change of scheme there must change
# the name here, or the cache would serve the old scheme's embeddings.
QUANTIZATION_SCHEMES = {"int8": "int8-dynamic-per-channel"}


def encoder_fingerprint(model: str, *, pooling: str, max_length: int, normalize: bool,
                        dtype: str, quantize: str | None) -> str:
    """What determines an encoder's embeddings besides the texts: the embedding cache's key and
    part of a stored map's provenance. One function for ``Encoder.fingerprint`` (a loaded model)
    and ``EncoderSpec.fingerprint`` (a cache lookup that loads nothing), so the two cannot drift.

    ``dtype`` is the one the model computes in (``auto`` resolved); with ``quantize`` both change
    the embeddings. float32 unquantised keeps the key it had before either existed, and so its
    cached embeddings and stored maps. The device and thread count are left out: they change at
    most the last bits of float32 sums.
    """
    key = f"{model}|{pooling}|{max_length}|norm={normalize}"
    if dtype != "float32":
        key += f"|dtype={dtype}"
    if quantize is not None:
        key += f"|quantize={QUANTIZATION_SCHEMES.get(quantize, quantize)}"
    return key


def texts_digest(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(hashlib.sha256(text.encode("utf-8")).digest())
    return digest.hexdigest()


def _path(fingerprint: str, texts: Sequence[str], cache_dir: str | Path) -> Path:
    key = hashlib.sha256(f"{fingerprint}|{texts_digest(texts)}".encode()).hexdigest()
    return Path(cache_dir).expanduser() / "embeddings" / f"{key[:32]}.safetensors"


def cached_embeddings(fingerprint: str, texts: Sequence[str],
                      cache_dir: str | Path) -> np.ndarray | None:
    """The cached embeddings of ``texts`` by the encoder of ``fingerprint``, or None: lets a silo
    skip loading its LM when every text it needs is cached."""
    path = _path(fingerprint, texts, cache_dir)
    if not path.exists():
        return None
    return require_finite(load_file(path)["embeddings"], f"{fingerprint} (cached in {path})",
                          len(texts))


def encode_cached(encoder: Encoder, texts: Sequence[str], cache_dir: str | Path | None) -> np.ndarray:
    """``encoder.encode(texts)``, read from / written to ``cache_dir`` when one is given."""
    if cache_dir is None:
        return require_finite(encoder.encode(texts), encoder.name, len(texts))
    cached = cached_embeddings(encoder.fingerprint, texts, cache_dir)
    if cached is not None:
        return cached
    embeddings = require_finite(encoder.encode(texts), encoder.name, len(texts))
    atomic_save_file({"embeddings": embeddings}, _path(encoder.fingerprint, texts, cache_dir))
    return embeddings


def require_finite(embeddings: np.ndarray, source: str, n_texts: int) -> np.ndarray:
    """Refuse embeddings with NaN or inf, or not one row per text: everything downstream (scales,
    encrypted sums, the head) would silently compute garbage from them."""
    if embeddings.ndim != 2 or len(embeddings) != n_texts:
        raise ValueError(f"embeddings from {source}: expected {n_texts} rows, got shape "
                         f"{embeddings.shape}")
    bad = ~np.isfinite(embeddings).all(axis=1)
    if bad.any():
        raise ValueError(f"embeddings from {source} hold NaN or inf for {int(bad.sum())} of "
                         f"{n_texts} texts (first: text {int(np.argmax(bad))})")
    return embeddings
