"""What one silo is configured with, resolved once at the ClientApp boundary from the run config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from conf import active_silos
from crypto.params import CKKSParams
from strategy.protocol import ROLES

SILO_KEYS = {"role", "model", "pooling", "max_length", "batch_size", "normalize"}


@dataclass(frozen=True)
class EncoderSpec:
    """Which model embeds a silo's texts, and how (also the embedding cache key)."""

    model: str
    pooling: str = "mean"
    max_length: int = 128
    batch_size: int = 32
    normalize: bool = False


@dataclass(frozen=True)
class CorpusSpec:
    """The benchmark corpus and its seeded split into public / private / query texts."""

    name: str
    text_column: str = "text"
    label_column: str = "label"
    hf_split: str = "train"
    n_public: int = 800
    n_private: int = 400
    n_query: int = 300
    seed: int = 0
    holdout: float = 0.2
    ood: str | None = None  # a corpus whose texts are added to the queries as out-of-distribution
    n_ood: int = 0
    holdout_classes: tuple[str, ...] = ()  # classes the provider never trains on: OOD queries

    def public_parts(self, public: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Split the public indices into the fit part and the held-out part (same on every silo)."""
        if not 0.0 <= self.holdout < 1.0:
            raise ValueError(f"holdout must lie in [0, 1), got {self.holdout}")
        order = np.random.default_rng(self.seed + 1).permutation(public)
        n_val = round(self.holdout * len(public))
        return np.sort(order[n_val:]), np.sort(order[:n_val])


@dataclass(frozen=True)
class ServePolicy:
    """How a silo serves: the provider's limits and noise, the querier's output policy.

    ``query_budget``: encrypted queries per querier on a provider (None: unlimited), counted as
    ``crypto.query_capacity``; ``max_request_queries``: queries one request may carry (larger ones
    are refused before any ciphertext is read); ``logit_noise``: standard deviation of the noise a
    provider adds to every logit; ``output_top_k`` / ``output_decimals``: the querier keeps only
    the top-k logits, rounded (0 / None: all, unrounded).
    """

    query_budget: int | None = None
    max_request_queries: int = 8192
    logit_noise: float = 0.0
    output_top_k: int = 0
    output_decimals: int | None = None
    privacy_bits: int = 40
    min_security_bits: int = 128

    @classmethod
    def from_config(cls, serve: DictConfig) -> ServePolicy:
        budget, decimals = serve.get("query_budget"), serve.get("output_decimals")
        policy = cls(
            query_budget=None if budget is None else int(budget),
            max_request_queries=int(serve.get("max_request_queries", cls.max_request_queries)),
            logit_noise=float(serve.get("logit_noise", 0.0)),
            output_top_k=int(serve.get("output_top_k", 0)),
            output_decimals=None if decimals is None else int(decimals),
            privacy_bits=int(serve.get("privacy_bits", 40)),
            min_security_bits=int(serve.get("min_security_bits", 128)),
        )
        if policy.privacy_bits < 40:
            raise ValueError(f"serve.privacy_bits must be >= 40, got {policy.privacy_bits}")
        if policy.query_budget is not None and policy.query_budget < 0:
            raise ValueError(f"serve.query_budget must be >= 0 or null, got {budget}")
        if policy.max_request_queries < 1:
            raise ValueError("serve.max_request_queries must be >= 1")
        if not (np.isfinite(policy.logit_noise) and policy.logit_noise >= 0):
            raise ValueError(f"serve.logit_noise must be finite and >= 0, got {policy.logit_noise}")
        if policy.output_top_k < 0:
            raise ValueError(f"serve.output_top_k must be >= 0, got {policy.output_top_k}")
        return policy


@dataclass(frozen=True)
class SiloSettings:
    name: str
    role: str
    encoder: EncoderSpec
    corpus: CorpusSpec
    workdir: Path
    cache_dir: Path
    he: CKKSParams
    alphas: tuple[float, ...]
    select_alpha: bool
    default_alpha: float
    head_l2: float
    head_max_iter: int
    workers: int = 1
    serve: ServePolicy = ServePolicy()
    cosine: bool = False

    @classmethod
    def from_config(cls, cfg: DictConfig, name: str) -> SiloSettings:
        silos = active_silos(cfg)
        if name not in silos:
            raise KeyError(f"unknown silo {name!r}; configured silos: {list(silos)}")
        silo = silos[name]
        unknown = set(silo) - SILO_KEYS
        if unknown:
            raise KeyError(f"silo {name!r}: unknown keys {sorted(unknown)}; allowed: {sorted(SILO_KEYS)}")
        if silo.get("role") not in ROLES:
            raise ValueError(f"silo {name!r}: role must be one of {ROLES}, got {silo.get('role')!r}")
        encoder = EncoderSpec(
            model=str(silo.model),
            pooling=str(silo.get("pooling", cfg.encoder.pooling)),
            max_length=int(silo.get("max_length", cfg.encoder.max_length)),
            batch_size=int(silo.get("batch_size", cfg.encoder.batch_size)),
            normalize=bool(silo.get("normalize", cfg.encoder.normalize)),
        )
        corpus = CorpusSpec(
            name=str(cfg.dataset.name),
            text_column=str(cfg.dataset.text_column),
            label_column=str(cfg.dataset.label_column),
            hf_split=str(cfg.dataset.hf_split),
            n_public=int(cfg.dataset.n_public),
            n_private=int(cfg.dataset.n_private),
            n_query=int(cfg.dataset.n_query),
            seed=int(cfg.run.seed),
            holdout=float(cfg.alignment.holdout),
            ood=None if cfg.dataset.get("ood") is None else str(cfg.dataset.ood),
            n_ood=int(cfg.dataset.get("n_ood", 0)),
            holdout_classes=tuple(str(c) for c in cfg.dataset.get("holdout_classes", []) or []),
        )
        return cls(
            name=name,
            role=str(silo.role),
            encoder=encoder,
            corpus=corpus,
            workdir=Path(str(cfg.run.output_dir)).expanduser() / "silos" / name,
            cache_dir=Path(str(cfg.run.cache_dir)).expanduser(),
            he=CKKSParams.from_config(cfg.he),
            alphas=tuple(float(a) for a in cfg.alignment.alphas),
            select_alpha=bool(cfg.alignment.select_alpha),
            default_alpha=float(cfg.alignment.default_alpha),
            head_l2=float(cfg.head.l2),
            head_max_iter=int(cfg.head.max_iter),
            workers=int(cfg.alignment.workers),
            cosine=bool(cfg.alignment.cosine),
            serve=ServePolicy.from_config(cfg.serve),
        )


# What a deployed SuperNode's --node-config may set, e.g.
#   --node-config 'silo="bob" model="/srv/models/mpnet" dataset="/srv/data/bbc.csv" output-dir="/srv/out"'
# The run config (the coordinator's) names the silos; each silo's own host says where its model, data
# and output folders are, since those paths exist only there.
NODE_CONFIG_KEYS = {
    "role": "silos.{silo}.role",
    "model": "silos.{silo}.model",
    "dataset": "dataset.name",
    "output-dir": "run.output_dir",
    "cache-dir": "run.cache_dir",
}
SIMULATION_NODE_KEYS = {"partition-id", "num-partitions"}


def node_settings(cfg: DictConfig, node_config: dict) -> SiloSettings:
    """This node's silo settings: the run config, with what the node's own config says on top."""
    unknown = set(node_config) - set(NODE_CONFIG_KEYS) - SIMULATION_NODE_KEYS - {"silo"}
    if unknown:
        raise KeyError(f"unknown node config keys {sorted(unknown)}; allowed: silo, "
                       f"{', '.join(NODE_CONFIG_KEYS)}")
    name = silo_name(cfg, node_config)
    local = {key: value for key, value in node_config.items() if key in NODE_CONFIG_KEYS}
    if local:
        if name not in active_silos(cfg):  # checked before the update below would create it
            raise KeyError(f"unknown silo {name!r}; configured silos: {list(active_silos(cfg))}")
        cfg = cfg.copy()
        for key, value in local.items():
            OmegaConf.update(cfg, NODE_CONFIG_KEYS[key].format(silo=name), str(value), merge=False)
    return SiloSettings.from_config(cfg, name)


def silo_name(cfg: DictConfig, node_config: dict) -> str:
    """This node's silo: ``node_config['silo']`` when deployed, else the partition-id-th silo."""
    if "silo" in node_config:
        return str(node_config["silo"])
    names = list(active_silos(cfg))
    partition = int(node_config.get("partition-id", -1))
    if not 0 <= partition < len(names):
        raise ValueError(
            f"node has no 'silo' in its node config and partition-id {partition} does not index "
            f"the {len(names)} configured silos {names}"
        )
    return names[partition]
