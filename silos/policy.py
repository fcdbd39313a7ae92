"""A provider's own security policy: how much it answers, with how much noise, under which CKKS
parameters, and which optional rounds.

The policy is the provider's, never the operator's (whose run config is the coordinator's). Every
default is in ONE place, the ``provider_policy`` block of conf/default.yaml, read from the file
itself so that no run config can change it; a simulated provider overrides keys of it in its own
section (``silos.NAME.policy``), a deployed one in a YAML file that its SuperNode's node config
names (``--node-config 'silo="bob" policy="/srv/bob/policy.yaml"'``). See docs/security.md, "The
provider's policy".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from conf import CONF_DIR

SECURITY_LEVELS = (128, 192, 256)  # the HE Standard's levels (crypto/params.py MAX_LOG_Q)
MIN_PRIVACY_BITS = 40  # below this the flooding's statistical distance is not negligible


@dataclass(frozen=True, kw_only=True)
class ProviderPolicy:
    """What a provider enforces on every querier, whatever the querier or the operator ask.

    No field has a default here: they are in conf/default.yaml ``provider_policy`` (build one
    with :meth:`resolve`).

    Parameters
    ----------
    query_budget : encrypted query slots each querier may spend on this provider, across runs
        (None: unlimited), counted as ``crypto.query_capacity`` and kept on the provider's disk
        (``silos.budget``).
    max_request_queries : queries one request may carry; larger ones are refused unread.
    logit_noise : standard deviation of the Gaussian noise added to every logit (clipped at 6σ).
    privacy_bits : statistical security of the flooding of every reply (``crypto.CircuitPrivacy``).
    min_security_bits : CKKS parameters below this many bits of security (128, 192 or 256, HE
        Standard) are refused, whatever the querier's ``allow_insecure`` says.
    allow_cosine : answer the alignment's optional cosine round (``Provider.cosine_products``),
        which reveals statistics of the provider's row-normalised embeddings beyond X̃ᵀY.
    """

    query_budget: int | None
    max_request_queries: int
    logit_noise: float
    privacy_bits: int
    min_security_bits: int
    allow_cosine: bool

    def __post_init__(self) -> None:
        for key, value in _checked(self).items():
            object.__setattr__(self, key, value)

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def resolve(cls, overrides: Mapping[str, Any] | None = None, *,
                where: str = "provider_policy") -> ProviderPolicy:
        """The defaults of conf/default.yaml with ``overrides`` (a provider's own keys) on top.

        ``where`` names the overrides' source in errors (``silos.bob.policy``, a policy file).
        """
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(cls.keys()))
        if unknown:
            raise KeyError(f"{where}: unknown policy keys {unknown}; allowed: {list(cls.keys())}")
        try:
            return cls(**{**default_policy(), **overrides})
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {err}") from err

    @classmethod
    def from_file(cls, path: str | Path) -> ProviderPolicy:
        """A provider's policy file: a YAML mapping of policy keys (the others keep their default)."""
        path = Path(path).expanduser()
        where = f"policy file {path}"
        try:
            values = yaml.safe_load(path.read_text())
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{where} (node config 'policy') does not exist") from err
        except yaml.YAMLError as err:
            raise ValueError(f"{where}: not valid YAML: {err}") from err
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ValueError(f"{where}: must hold a mapping of policy keys, got "
                             f"{type(values).__name__}")
        return cls.resolve(values, where=where)


@lru_cache(maxsize=1)
def _defaults_file() -> dict[str, Any]:
    block = OmegaConf.load(CONF_DIR / "default.yaml").get("provider_policy")
    if block is None:
        raise KeyError("conf/default.yaml has no provider_policy block")
    return OmegaConf.to_container(block, resolve=True)


def default_policy() -> dict[str, Any]:
    """The ``provider_policy`` block of conf/default.yaml: the file's, not a run config's."""
    return dict(_defaults_file())


def _checked(policy: ProviderPolicy) -> dict[str, Any]:
    """Each field type- and range-checked (an error names its key), normalised."""
    def integer(key: str, value: Any, low: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{key} must be an integer >= {low}, got {value!r}")
        return value

    budget = policy.query_budget
    noise = policy.logit_noise
    if isinstance(noise, bool) or not isinstance(noise, int | float) or not (
            math.isfinite(noise) and noise >= 0):
        raise ValueError(f"logit_noise must be a finite number >= 0, got {noise!r}")
    if policy.min_security_bits not in SECURITY_LEVELS or isinstance(policy.min_security_bits, bool):
        raise ValueError(f"min_security_bits must be one of {SECURITY_LEVELS} (HE Standard), got "
                         f"{policy.min_security_bits!r}")
    if not isinstance(policy.allow_cosine, bool):
        raise ValueError(f"allow_cosine must be true or false, got {policy.allow_cosine!r}")
    return {
        "query_budget": None if budget is None else integer(
            "query_budget (null: unlimited)", budget, 0),
        "max_request_queries": integer("max_request_queries", policy.max_request_queries, 1),
        "logit_noise": float(noise),
        "privacy_bits": integer("privacy_bits", policy.privacy_bits, MIN_PRIVACY_BITS),
    }
