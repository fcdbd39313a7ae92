"""Configuration: one OmegaConf default YAML, HE presets, dotlist overrides.

Only entry points (the ServerApp, the ClientApp, the simulation CLI) read configuration; everything
below them takes explicit keyword arguments.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parent


def he_presets() -> list[str]:
    """Names of the CKKS presets shipped in conf/he/."""
    return sorted(p.stem for p in (CONF_DIR / "he").glob("*.yaml"))


def load_config(overrides: Iterable[str] | str = ()) -> DictConfig:
    """Load conf/default.yaml, apply a dotlist (list or one shell-quoted string), merge the HE preset.

    Keys a preset defines can still be overridden, e.g. ``he.preset=n16384 he.input_scale_bits=28``.
    """
    base = OmegaConf.load(CONF_DIR / "default.yaml")
    cli = dotlist(overrides)
    _refuse_provider_policy(cli, base)
    refuse_unknown_keys(cli, base, "conf/default.yaml", open_keys=("silos", "he"))
    cfg = OmegaConf.merge(base, cli)
    preset = str(cfg.he.preset)
    preset_file = CONF_DIR / "he" / f"{preset}.yaml"
    if not preset_file.is_file():
        raise ValueError(f"unknown HE preset {preset!r}; choose one of {he_presets()}")
    cfg.he = OmegaConf.merge(cfg.he, OmegaConf.load(preset_file), cli.get("he", {}))
    return cfg


def dotlist(overrides: Iterable[str] | str) -> DictConfig:
    """Overrides as a config: a dotlist, or one shell-quoted string of them (a run config's)."""
    if isinstance(overrides, str):
        overrides = shlex.split(overrides)
    return OmegaConf.from_dotlist(list(overrides))


def refuse_unknown_keys(cli: DictConfig, base: DictConfig, where: str,
                        open_keys: Iterable[str] = ()) -> None:
    """Refuse a key of ``cli`` that ``base`` (read from ``where``) lacks: a mistyped key must not
    be silently ignored. Below ``open_keys`` any key is allowed (new silos, HE preset keys)."""
    for key in _unknown_keys(cli, base, "", tuple(open_keys)):
        raise KeyError(f"unknown config key {key!r} (see {where})")


def _refuse_provider_policy(cli: DictConfig, base: DictConfig) -> None:
    """A provider's limits are its own policy, not the run config's (the operator's): the old
    ``serve.*`` keys and the ``provider_policy`` defaults cannot be set from it."""
    policy_keys = list(base.provider_policy)
    moved = [f"serve.{key}" for key in cli.get("serve", {}) if key in policy_keys]
    if "provider_policy" in cli:
        moved += [f"provider_policy.{key}" for key in cli.provider_policy or ["*"]]
    for key in moved:
        name = key.split(".", 1)[1]
        raise KeyError(
            f"unknown config key {key}: the limits of a provider are its own policy, not set by "
            f"the run config; set {name} in the policy file of the provider (--node-config "
            f"policy=/path/policy.yaml) when deployed, or silos.<provider>.policy.{name} in a "
            f"simulation (defaults: provider_policy in conf/default.yaml; docs/security.md)")


def _unknown_keys(cli: DictConfig, base: DictConfig, prefix: str,
                  open_keys: tuple[str, ...]) -> list[str]:
    """Dotted keys of ``cli`` absent from ``base``, none below ``open_keys``."""
    unknown = []
    for key, value in cli.items():
        path = f"{prefix}{key}"
        if path in open_keys:
            continue
        if key not in base:
            unknown.append(path)
        elif isinstance(value, DictConfig) and isinstance(base[key], DictConfig):
            unknown += _unknown_keys(value, base[key], f"{path}.", open_keys)
    return unknown


def file_overrides(path: str | Path) -> list[str]:
    """A YAML file of overrides (the same keys as conf/default.yaml, nested) as a dotlist, so that
    it travels to the silos like command-line overrides (the run config carries a dotlist)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--config {path}: no such file")
    loaded = OmegaConf.load(path)
    if not isinstance(loaded, DictConfig):
        raise ValueError(f"--config {path}: expected a mapping of config keys")

    def flatten(node: DictConfig, prefix: str) -> list[str]:
        out = []
        for key, value in node.items_ex(resolve=False):
            if isinstance(value, DictConfig) and len(value):
                out += flatten(value, f"{prefix}{key}.")
            else:
                out.append(f"{prefix}{key}={_dotlist_value(value)}")
        return out

    return flatten(loaded, "")


def _dotlist_value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, ListConfig):
        return "[" + ",".join(_dotlist_value(v) for v in value) + "]"
    if isinstance(value, DictConfig):  # an empty mapping
        return "{}"
    return str(value)


def active_silos(cfg: DictConfig) -> dict[str, DictConfig]:
    """Configured silos in node order; ``silos.NAME=null`` on the command line removes one."""
    return {name: silo for name, silo in cfg.silos.items() if silo is not None}


def parse_pairs(pairs) -> list[tuple[str, str]] | None:
    """``["alice:bob", ...]`` to name tuples; an empty list means every querier with every provider."""
    if not pairs:
        return None
    parsed = [tuple(str(p).split(":")) for p in pairs]
    if any(len(p) != 2 for p in parsed):
        raise ValueError(f"pairs must look like 'querier:provider', got {list(pairs)}")
    return parsed
