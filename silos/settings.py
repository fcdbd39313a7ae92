"""What one silo is configured with, resolved once at the ClientApp boundary from the run config
(and, for a deployed silo, its own node config)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from flwr.app import Context
from omegaconf import DictConfig, OmegaConf

from conf import active_silos, load_config
from crypto.params import CKKSParams
from protocol import ROLES
from silos.data import DataSource
from silos.encoder_spec import ENCODER_KEYS, EncoderSpec
from silos.policy import ProviderPolicy

SILO_KEYS = {"role", "model", *ENCODER_KEYS, "policy", "public", "task", "queries", "tasks"}
SOURCE_KEYS = {"source", "text_column", "label_column", "id_column", "hf_split"}


@dataclass(frozen=True)
class ServePolicy:
    """The querier's output policy, applied after decryption: it keeps only the top-k logits,
    rounded (0 / None: all, unrounded). It protects the querier's consumers, not the provider,
    whose limits are its own :class:`silos.policy.ProviderPolicy`.
    """

    output_top_k: int
    output_decimals: int | None

    @classmethod
    def from_config(cls, serve: DictConfig) -> ServePolicy:
        """From the ``serve`` section (its defaults: conf/default.yaml's)."""
        decimals = serve.output_decimals
        policy = cls(output_top_k=int(serve.output_top_k),
                     output_decimals=None if decimals is None else int(decimals))
        if policy.output_top_k < 0:
            raise ValueError(f"serve.output_top_k must be >= 0, got {policy.output_top_k}")
        return policy


@dataclass(frozen=True)
class SiloSettings:
    """What one silo is configured with. Data roles: ``public`` (every silo), ``tasks`` (a
    provider's, name → labelled data), ``queries`` and ``task`` (a querier's); None where the
    config leaves them unset (refused when used, naming the key)."""

    name: str
    role: str
    encoder: EncoderSpec
    public: DataSource | None
    tasks: tuple[tuple[str, DataSource], ...]
    queries: DataSource | None
    task: str | None
    workdir: Path
    cache_dir: Path
    he: CKKSParams
    seed: int  # of the held-out part of the public texts, the same on both sides of a pair
    holdout: float
    alphas: tuple[float, ...]
    select_alpha: bool
    default_alpha: float
    reuse: bool  # reuse a stored map (querier) whose provenance is unchanged
    head_l2: float
    head_max_iter: int
    ood_score: str
    ood_threshold: float
    policy: ProviderPolicy  # a provider's own limits (a querier's are the defaults, unused)
    state_dir: Path  # what a silo keeps across runs (a provider's query budget)
    workers: int  # helper processes of the fitting (alignment.workers)
    serve_workers: int  # processes of a serving request (serve.workers)
    serve: ServePolicy
    cosine: bool

    def alignment_config(self) -> dict:
        """The alignment keys a stored map depends on (part of its provenance)."""
        return {"holdout": self.holdout, "seed": self.seed, "alphas": list(self.alphas),
                "select_alpha": self.select_alpha, "default_alpha": self.default_alpha}

    @classmethod
    def from_config(cls, cfg: DictConfig, name: str, *, policy: ProviderPolicy | None = None,
                    state_dir: Path | None = None) -> SiloSettings:
        """The silo ``name`` of ``cfg``. ``policy`` / ``state_dir``: the deployed provider's own
        (its node config's); None: the silo's section of ``cfg`` (a simulation, which plays every
        party) and its workdir."""
        silos = active_silos(cfg)
        if name not in silos:
            raise KeyError(f"unknown silo {name!r}; configured silos: {list(silos)}")
        silo = silos[name]
        unknown = set(silo) - SILO_KEYS
        if unknown:
            raise KeyError(f"silo {name!r}: unknown keys {sorted(unknown)}; allowed: {sorted(SILO_KEYS)}")
        if silo.get("role") not in ROLES:
            raise ValueError(f"silo {name!r}: role must be one of {ROLES}, got {silo.get('role')!r}")
        if silo.get("policy") is not None and silo.role != "provider":
            raise KeyError(f"silo {name!r} is a {silo.role}: only a provider has a policy "
                           f"(silos.{name}.policy)")
        if policy is None:
            own = silo.get("policy")
            policy = ProviderPolicy.resolve(
                {} if own is None else OmegaConf.to_container(own, resolve=True),
                where=f"silos.{name}.policy")
        workdir = Path(str(cfg.run.output_dir)).expanduser() / "silos" / name
        cache_dir = Path(str(cfg.run.cache_dir)).expanduser()
        encoder = EncoderSpec.from_config(cfg.encoder, str(silo.model), silo, cache_dir=cache_dir,
                                          silo=name)
        if str(cfg.predictions.ood_score) not in ("msp", "energy"):
            raise ValueError(f"predictions.ood_score must be msp or energy, got "
                             f"{cfg.predictions.ood_score!r}")
        roles = _data_roles(cfg, name, silo)
        return cls(
            name=name,
            role=str(silo.role),
            encoder=encoder,
            **roles,
            workdir=workdir,
            cache_dir=cache_dir,
            he=CKKSParams.from_config(cfg.he),
            seed=int(cfg.run.seed),
            holdout=float(cfg.alignment.holdout),
            alphas=tuple(float(a) for a in cfg.alignment.alphas),
            select_alpha=bool(cfg.alignment.select_alpha),
            default_alpha=float(cfg.alignment.default_alpha),
            reuse=bool(cfg.alignment.reuse),
            head_l2=float(cfg.head.l2),
            head_max_iter=int(cfg.head.max_iter),
            ood_score=str(cfg.predictions.ood_score),
            ood_threshold=float(cfg.predictions.ood_threshold),
            workers=int(cfg.alignment.workers),
            serve_workers=int(cfg.serve.workers),
            cosine=bool(cfg.alignment.cosine),
            policy=policy,
            state_dir=workdir if state_dir is None else Path(state_dir).expanduser(),
            serve=ServePolicy.from_config(cfg.serve),
        )


def _data_roles(cfg: DictConfig, name: str, silo: DictConfig) -> dict:
    """The silo's data roles from ``public`` (or the silo's own copy, ``silos.NAME.public``), its
    own section and the ``columns`` defaults."""
    columns = cfg.columns
    public = None
    own = silo.get("public")
    if own is not None:
        own = {"source": own} if isinstance(own, str) else own
        public = DataSource(str(own["source"]), str(own.get("text_column", cfg.public.text_column)),
                            None, None, str(own.get("hf_split", cfg.public.hf_split)))
    elif cfg.public.get("source") is not None:
        public = DataSource(str(cfg.public.source), str(cfg.public.text_column), None, None,
                            str(cfg.public.hf_split))
    if silo.role == "querier":
        if silo.get("tasks") is not None:
            raise KeyError(f"silo {name!r} is a querier: tasks are a provider's; a querier names "
                           f"one task (silos.{name}.task) and its queries (silos.{name}.queries)")
        queries = silo.get("queries")
        return {"public": public, "tasks": (), "task": _optional_str(silo.get("task")),
                "queries": None if queries is None else _source(
                    queries, columns, f"silos.{name}.queries", ids=True)}
    for key in ("queries", "task"):
        if silo.get(key) is not None:
            raise KeyError(f"silo {name!r} is a provider: {key} is a querier's; a provider "
                           f"names its tasks (silos.{name}.tasks.NAME.source=...)")
    tasks = silo.get("tasks") or {}
    return {"public": public, "queries": None, "task": None,
            "tasks": tuple((str(task), _source(spec, columns, f"silos.{name}.tasks.{task}"))
                           for task, spec in tasks.items() if spec is not None)}


def _source(spec, columns: DictConfig, key: str, *, ids: bool = False) -> DataSource:
    """A role's source: a path string, or a mapping with ``source`` and optional columns."""
    if isinstance(spec, str):
        spec = {"source": spec}
    elif not isinstance(spec, DictConfig) or "source" not in spec:
        raise KeyError(f"{key} must be a source (path, packaged corpus, dataset id) or a mapping "
                       f"with source and optional {sorted(SOURCE_KEYS - {'source'})}")
    unknown = set(spec) - SOURCE_KEYS
    if unknown:
        raise KeyError(f"{key}: unknown keys {sorted(unknown)}; allowed: {sorted(SOURCE_KEYS)}")
    return DataSource(
        source=str(spec["source"]),
        text_column=str(spec.get("text_column", columns.text)),
        label_column=_optional_str(spec.get("label_column", columns.label)),
        id_column=_optional_str(spec.get("id_column", columns.id)) if ids else None,
        hf_split=str(spec.get("hf_split", columns.hf_split)),
    )


def _optional_str(value) -> str | None:
    return None if value is None else str(value)


# What a deployed SuperNode's --node-config may set, e.g.
#   --node-config 'silo="bob" model="/srv/models/mpnet" public="/srv/data/public.jsonl"
#                  tasks="news=/srv/data/news.csv" output-dir="/srv/out"'
# The run config (the coordinator's) names the silos; each silo's own host says where its model, data
# and output folders are, since those paths exist only there. ``tasks``: a provider's, as
# NAME=PATH pairs separated by commas; ``queries`` and ``task``: a querier's.
NODE_CONFIG_KEYS = {
    "role": "silos.{silo}.role",
    "model": "silos.{silo}.model",
    "public": "public.source",
    "queries": "silos.{silo}.queries.source",
    "task": "silos.{silo}.task",
    "tasks": "silos.{silo}.tasks.{task}.source",
    "output-dir": "run.output_dir",
    "cache-dir": "run.cache_dir",
}
# A deployed provider's own: its policy file (silos/policy.py) and the folder that keeps its query
# budget across runs (default: its workdir, <output-dir>/silos/<silo>). Never from the run config.
NODE_OWN_KEYS = {"policy", "state-dir"}
SIMULATION_NODE_KEYS = {"partition-id", "num-partitions"}


def node_settings(cfg: DictConfig, node_config: dict) -> SiloSettings:
    """This node's silo settings: the run config, with what the node's own config says on top.

    A deployed node (its node config names its ``silo``) is another organisation's host: a
    provider's policy comes from its node config's ``policy`` file only (a run config that sets
    ``silos.NAME.policy`` for it is refused), and its budget must live in a folder its node config
    names. A simulated node (``partition-id``) plays its silo's section of the one config.
    """
    allowed = set(NODE_CONFIG_KEYS) | NODE_OWN_KEYS | SIMULATION_NODE_KEYS | {"silo"}
    unknown = set(node_config) - allowed
    if unknown:
        raise KeyError(f"unknown node config keys {sorted(unknown)}; allowed: silo, "
                       f"{', '.join([*NODE_CONFIG_KEYS, *sorted(NODE_OWN_KEYS)])}")
    name = silo_name(cfg, node_config)
    local = {key: value for key, value in node_config.items() if key in NODE_CONFIG_KEYS}
    if local:
        if name not in active_silos(cfg):  # checked before the update below would create it
            raise KeyError(f"unknown silo {name!r}; configured silos: {list(active_silos(cfg))}")
        cfg = cfg.copy()
        for key, value in local.items():
            if key == "tasks":
                for task, path in _task_paths(str(value)):
                    OmegaConf.update(cfg, NODE_CONFIG_KEYS[key].format(silo=name, task=task),
                                     path, merge=True)
            else:
                OmegaConf.update(cfg, NODE_CONFIG_KEYS[key].format(silo=name), str(value),
                                 merge=True)
    if "silo" not in node_config:
        if set(node_config) & NODE_OWN_KEYS:
            raise KeyError(f"node config keys {sorted(set(node_config) & NODE_OWN_KEYS)} are a "
                           "deployed provider's: name its silo too (silo=...)")
        return SiloSettings.from_config(cfg, name)
    return _deployed(cfg, name, node_config)


def _task_paths(value: str) -> list[tuple[str, str]]:
    """``"news=/srv/news.csv,sport=/srv/sport.csv"`` (the ``tasks`` node config key) as pairs."""
    pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
    if not pairs or any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
        raise ValueError(f"node config tasks={value!r}: expected NAME=PATH pairs separated by "
                         "commas, e.g. tasks=\"news=/srv/data/news.csv\"")
    return [(task.strip(), path.strip()) for task, path in pairs]


def _deployed(cfg: DictConfig, name: str, node_config: dict) -> SiloSettings:
    """A deployed silo: its policy and state folder from its own node config, never the run's."""
    silo = active_silos(cfg).get(name)
    if silo is not None and silo.get("policy") is not None:
        raise PermissionError(
            f"the run config (the operator's) sets silos.{name}.policy; a deployed provider's "
            "policy is its own: set it in the policy file its node config names (policy=...)")
    policy = (ProviderPolicy.from_file(str(node_config["policy"])) if "policy" in node_config
              else ProviderPolicy.resolve())
    state_dir = Path(str(node_config["state-dir"])) if "state-dir" in node_config else None
    settings = SiloSettings.from_config(cfg, name, policy=policy, state_dir=state_dir)
    if settings.role != "provider" and set(node_config) & NODE_OWN_KEYS:
        raise KeyError(f"silo {name!r} is a {settings.role}: node config keys "
                       f"{sorted(set(node_config) & NODE_OWN_KEYS)} are a provider's")
    own_folder = "state-dir" in node_config or "output-dir" in node_config
    if settings.role == "provider" and policy.query_budget is not None and not own_folder:
        raise ValueError(
            f"provider {name!r} has a query budget but no folder of its own to keep it in: its "
            f"workdir comes from the operator's run.output_dir, which could move (and reset) it; "
            "set state-dir (or output-dir) in its node config")
    return settings


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


@lru_cache(maxsize=8)
def _loaded(overrides: str) -> DictConfig:
    return load_config(overrides)


def run_config(context: Context) -> DictConfig:
    """The run's config (conf/default.yaml + the run config's ``overrides``), parsed once per
    process for each run: every message of a run carries the same overrides. Read-only."""
    return _loaded(str(context.run_config.get("overrides", "")))
