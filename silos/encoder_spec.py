"""Which model embeds a silo's texts and how: the ``encoder`` config, with what the model states
about its own embeddings where the config leaves a choice to it.

A sentence-transformers model is a transformers model plus the files that say how its embedding is
made: ``modules.json`` lists the modules a text goes through (Transformer → Pooling → Normalize),
``1_Pooling/config.json`` says which pooling, ``sentence_bert_config.json`` its ``max_seq_length``.
Those are that model's defaults. In conf/default.yaml ``encoder.pooling`` and ``encoder.normalize``
are null, which means the model's own (mean pooling and no normalisation for a model that states
none: a causal LM, a plain transformers model); ``encoder.max_length`` is 64, the cost choice for
this machine (docs/usage.md, "Encoders"), and null means the model's own ``max_seq_length``. A value
set anywhere (``encoder.*``, or ``silos.NAME.*`` for one silo) overrides the model's.

Nothing here imports torch: a silo looks its cached embeddings up by a spec's fingerprint without
loading the model (``EncoderSpec.fingerprint``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from silos.embedding_cache import encoder_fingerprint
from silos.pooling import POOLINGS
from silos.registry import shipped_folder

# The keys of the ``encoder`` section (and of a silo's own section) that an EncoderSpec holds.
ENCODER_KEYS = ("pooling", "max_length", "batch_size", "normalize", "device", "dtype", "threads",
                "quantize")
# What null means for a model that states nothing about its embedding.
UNSTATED = {"pooling": "mean", "normalize": False}
# sentence-transformers' pooling modes (1_Pooling/config.json) that silos.pooling implements.
ST_POOLINGS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
               "pooling_mode_max_tokens": "max", "pooling_mode_lasttoken": "last"}
ST_MODULE = "sentence_transformers.models."
# The modules of a sentence-transformers model that the encoder runs (the rest it would skip).
ST_RUN = {f"{ST_MODULE}{name}" for name in ("Transformer", "Pooling", "Normalize")}


@dataclass(frozen=True)
class ModelDefaults:
    """What a model's own files state about its embedding (None: nothing)."""

    pooling: str | None = None
    normalize: bool | None = None
    max_length: int | None = None
    unsupported_pooling: tuple[str, ...] = ()  # its pooling modes that silos.pooling lacks
    skipped_modules: tuple[str, ...] = ()  # modules it lists that the encoder does not run


def read_model_defaults(folder: Path | None) -> ModelDefaults:
    """The sentence-transformers files of the model in ``folder``; none there: no defaults."""
    if folder is None or not (folder / "modules.json").is_file():
        return ModelDefaults()
    modules = json.loads((folder / "modules.json").read_text())
    types = [str(m.get("type", "")) for m in modules]
    pooling, unsupported = None, ()
    pooling_module = next((m for m in modules if m.get("type") == f"{ST_MODULE}Pooling"), None)
    if pooling_module is not None:
        config = json.loads((folder / str(pooling_module.get("path", "")) / "config.json")
                            .read_text())
        modes = [key for key, on in config.items() if key.startswith("pooling_mode_") and on is True]
        if len(modes) == 1 and modes[0] in ST_POOLINGS:
            pooling = ST_POOLINGS[modes[0]]
        else:
            unsupported = tuple(modes)
    bert_config = folder / "sentence_bert_config.json"
    max_length = (json.loads(bert_config.read_text()).get("max_seq_length")
                  if bert_config.is_file() else None)
    return ModelDefaults(pooling=pooling, normalize=f"{ST_MODULE}Normalize" in types,
                         max_length=None if max_length is None else int(max_length),
                         unsupported_pooling=unsupported,
                         skipped_modules=tuple(t for t in types if t not in ST_RUN))


@lru_cache(maxsize=32)
def model_defaults(model: str, cache_dir: Path) -> ModelDefaults:
    """:func:`read_model_defaults` of ``model`` where it ships its files (``registry``), once per
    process: a silo builds its settings for every message."""
    return read_model_defaults(shipped_folder(model, cache_dir=cache_dir))


@dataclass(frozen=True)
class EncoderSpec:
    """Which model embeds a silo's texts, and how (``Encoder.fingerprint``, the embedding cache
    key, is built from it). Built by :meth:`from_config`: the code holds no default of its own;
    the values are checked where the model loads (``silos.encoders``), naming the config key."""

    model: str
    pooling: str
    max_length: int
    batch_size: int
    normalize: bool
    device: str
    dtype: str
    threads: int | None
    quantize: str | None

    @classmethod
    def from_config(cls, encoder: Mapping, model: str, own: Mapping | None = None, *,
                    cache_dir: Path, silo: str | None = None) -> EncoderSpec:
        """``model``'s spec: ``own`` (the section of the silo named ``silo``: ``silos.NAME.pooling``
        …) over the ``encoder`` section; pooling, normalize and max_length left null by both are
        the model's own (see the module's docstring)."""
        value = {key: (own.get(key, encoder.get(key)) if own is not None else encoder.get(key))
                 for key in ENCODER_KEYS}
        if value["pooling"] is None or value["normalize"] is None or value["max_length"] is None:
            value.update(_model_choices(value, model_defaults(str(model), Path(cache_dir)),
                                        str(model), silo))
        threads, quantize = value["threads"], value["quantize"]
        return cls(model=str(model), pooling=str(value["pooling"]),
                   max_length=int(value["max_length"]), batch_size=int(value["batch_size"]),
                   normalize=bool(value["normalize"]), device=str(value["device"]),
                   dtype=str(value["dtype"]),
                   threads=threads,  # None or an int; silos.encoders checks it
                   quantize=None if quantize is None else str(quantize))

    @property
    def fingerprint(self) -> str:
        """What determines the embeddings besides the texts: ``Encoder.fingerprint`` of the
        encoder this spec loads (the embedding cache's key, part of a stored map's provenance).
        Only ``dtype=auto`` needs torch (is there a GPU?), so a cache lookup with an explicit
        dtype loads neither torch nor the model."""
        dtype = self.dtype
        if dtype == "auto" and self.quantize is None:
            from silos.encoders import resolve_device, resolve_dtype

            dtype = resolve_dtype(dtype, device=resolve_device(self.device))
        elif dtype == "auto":
            dtype = "float32"  # what a quantised model computes in (silos.encoders)
        return encoder_fingerprint(self.model, pooling=self.pooling, max_length=self.max_length,
                                   normalize=self.normalize, dtype=dtype, quantize=self.quantize)


def _model_choices(value: dict, stated: ModelDefaults, model: str, silo: str | None) -> dict:
    """The null choices among pooling, normalize and max_length, made by the model's own files."""

    def keys(*names: str) -> str:
        """Where each can be set: for every silo, or for this one."""
        return " and ".join(f"encoder.{n}" + (f" (or silos.{silo}.{n})" if silo else "")
                            for n in names)

    if stated.skipped_modules and (value["pooling"] is None or value["normalize"] is None):
        raise ValueError(
            f"{model}: its modules.json lists {list(stated.skipped_modules)}, which this encoder "
            f"does not run, so its own embeddings cannot be made here; set "
            f"{keys('pooling', 'normalize')} to embed its final hidden states anyway")
    if value["pooling"] is None and stated.unsupported_pooling:
        raise ValueError(
            f"{model}: its pooling {list(stated.unsupported_pooling)} (1_Pooling/config.json) is "
            f"not one of {POOLINGS}; set {keys('pooling')}")
    if value["max_length"] is None and stated.max_length is None:
        raise ValueError(f"max_length=null means the model's own max_seq_length, and {model} "
                         f"states none (no sentence_bert_config.json); set {keys('max_length')}")
    stated_values = {"pooling": stated.pooling, "normalize": stated.normalize,
                     "max_length": stated.max_length}
    return {key: next(v for v in (stated_values[key], UNSTATED.get(key)) if v is not None)
            for key in stated_values if value[key] is None}
