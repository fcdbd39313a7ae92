"""Local multi-silo simulation: every configured silo in Flower's simulation engine, one report.

    python -m simulations.run_local [KEY=VALUE ...]

KEY=VALUE pairs override conf/default.yaml (OmegaConf dotlist), e.g.
    dataset.n_query=200 he.preset=n16384 silos.carol=null serve.batch_size=1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

from omegaconf import DictConfig

from conf import active_silos, file_overrides, he_presets, load_config, parse_pairs
from protocol import ROLES
from silos.data import PACKAGED_DATASETS
from silos.registry import PACKAGED_MODELS
from silos.settings import SiloSettings
from simulations.benchmark import benchmark_overrides, benchmark_rows
from simulations.engine import simulate
from simulations.report import build_report
from strategy.server_app import path_chooser
from strategy.table import format_table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m simulations.run_local",
        description=(
            "Run the secure cross-silo inference protocol between the configured silos (one "
            "querier, several providers) in Flower's simulation engine: encrypted alignment on "
            "the shared public texts (or the stored map, when nothing changed), then encrypted "
            "classification of the querier's texts by every provider that offers its task. The "
            "querier writes its predictions (CSV and JSONL per provider, and their ensemble); "
            "the run prints a table per pair and writes report.json and report.md. By default "
            "the benchmark preset splits one packaged corpus into the three data roles; name "
            "your own with public.source=... silos.NAME.queries.source=... "
            "silos.NAME.tasks.TASK.source=... (docs/usage.md)."
        ),
        epilog=(
            f"packaged models: {', '.join(PACKAGED_MODELS)}\n"
            f"packaged corpora: {', '.join(PACKAGED_DATASETS)} (or a CSV path, or a HF dataset id)\n"
            f"HE presets: {', '.join(he_presets())}\n"
            "defaults and every key: conf/default.yaml; remove a silo with silos.NAME=null"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE", type=Path,
                        help="a YAML file of overrides (nested keys of conf/default.yaml), e.g. "
                             "each organisation's data; KEY=VALUE pairs apply on top")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides (OmegaConf dotlist), e.g. dataset.n_query=200")
    parser.add_argument("--referee", choices=("auto", "on", "off"), default="auto",
                        help="add the plaintext references to the report (native scores, the "
                             "float64 map and head): they embed the querier's texts with every "
                             "provider's model, minutes for large query sets. auto: on for the "
                             "benchmark preset, off for your own data")
    parser.add_argument("--verbose", action="store_true", help="Flower debug logs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.config is not None:
            args.overrides = [*file_overrides(args.config), *args.overrides]
        cfg, output_dir, overrides = load_run(args.overrides)
    except (KeyError, ValueError) as err:
        print(f"error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    referee = args.referee == "on" or (
        args.referee == "auto" and load_config(args.overrides).public.get("source") is None)
    simulate(
        _server_app(), _client_app(),
        num_silos=len(active_silos(cfg)),
        overrides=overrides,
        backend=str(cfg.simulation.backend),
        cpus_per_silo=float(cfg.simulation.cpus_per_silo),
        verbose=args.verbose,
    )
    run_file = output_dir / "run.json"
    if not run_file.exists():
        print(f"error: the simulation ended without a summary ({run_file})", file=sys.stderr)
        return 1
    return report_run(output_dir, "python -m simulations.run_local " + " ".join(args.overrides),
                      started, referee=referee)


def load_run(cli_overrides: list[str]) -> tuple[DictConfig, Path, list[str]]:
    """The checked config, its absolute output folder, and the overrides that pin that folder
    (every engine's silos must write where the referee reads) and name the benchmark preset's
    files where it applies (``public.source`` null). Raises KeyError/ValueError."""
    cfg = load_config(cli_overrides)
    output_dir = Path(str(cfg.run.output_dir)).expanduser().resolve()
    overrides = [*cli_overrides, f"run.output_dir={output_dir}"]
    overrides += benchmark_overrides(load_config(overrides))
    cfg = load_config(overrides)
    check_silos(cfg)
    return cfg, output_dir, overrides


def report_run(output_dir: Path, command: str, started: float, *,
               node_configs: dict[str, dict] | None = None, referee: bool = True) -> int:
    """Report a finished run (its run.json), refereed unless ``referee`` is off; print the table
    and failures; the exit code. ``node_configs``: a deployment's, whose silos name their own
    data."""
    run = json.loads((output_dir / "run.json").read_text())
    report = build_report(output_dir, run, command.strip(), node_configs=node_configs,
                          referee=referee)
    if not report["pairs"]:
        print("\nNo pair completed: no (querier, provider) pair ran (why: the errors below).")
    elif referee:  # else the coordinator's table above is the report's
        print("\nReport, with the benchmark's plaintext references:")
        print(format_table(report["pairs"]))
    print(f"\nreport: {output_dir / 'report.md'}  ({time.perf_counter() - started:.0f} s)")
    failed = [p for p in report["pairs"] if p.get("status") != "ok"]
    for pair in failed:
        print(f"failed: {pair['querier']} → {pair['provider']}: {pair.get('error')}",
              file=sys.stderr)
    for error in report["errors"]:
        print(f"error: {error}", file=sys.stderr)
    return 1 if failed or report["errors"] or not report["pairs"] else 0


def check_silos(cfg: DictConfig, *, data: bool = True) -> None:
    """Fail before any worker starts: every silo's settings, the CKKS parameters, the roles, and
    (``data``) every silo's model name and the corpus, its columns and its split, each error naming
    the config key to change. Otherwise each would surface only once Ray and the silos are up, from
    every silo, after the workers' tracebacks."""
    settings = [SiloSettings.from_config(cfg, name) for name in active_silos(cfg)]
    for role in ROLES:
        if not any(s.role == role for s in settings):
            raise ValueError(f"no {role} among the configured silos {[s.name for s in settings]}")
    settings[0].he.check()
    path_chooser(cfg)  # serve.path, and the cost model's calibration for these parameters
    if not settings[0].he.is_secure:
        print("\n" + "!" * 78 + "\nWARNING: he.allow_insecure=true and these CKKS parameters are "
              "BELOW 128-bit\nsecurity (HE Standard). For experiments only: never serve real data "
              "with them.\n" + "!" * 78 + "\n", file=sys.stderr)
    for s in settings:
        if s.role == "provider" and int(cfg.serve.batch_size) > s.policy.max_request_queries:
            raise ValueError(f"serve.batch_size={cfg.serve.batch_size} exceeds provider {s.name!r}'s "
                             f"max_request_queries={s.policy.max_request_queries} (its policy): "
                             "it would refuse every batch")
    roles = {s.name: s.role for s in settings}
    for querier, provider in parse_pairs(cfg.pairs) or []:
        if roles.get(querier) != "querier" or roles.get(provider) != "provider":
            raise ValueError(f"pair {querier}:{provider} is not a configured querier:provider pair")
    if data and cfg.public.get("source") is None:  # the preset's corpus, split as configured
        check_models(settings)
        benchmark_rows(cfg)
    elif data:
        check_models(settings)
        check_data(settings)


def check_models(settings: list[SiloSettings]) -> None:
    """Every silo's model resolves here (installed, or a path that exists)."""
    from silos.registry import ModelNotInstalledError, check_model

    for s in settings:
        try:
            check_model(s.encoder.model)
        except (ModelNotInstalledError, FileNotFoundError) as err:
            raise ValueError(f"silos.{s.name}.model={s.encoder.model}: {err}") from None


def check_data(settings: list[SiloSettings]) -> None:
    """Every data role loads: the same functions and checks the silos run (a second or two), so
    what passes here passes there."""
    from silos.runtime import public_texts, querier_task, query_texts, task_tables

    for s in settings:
        public_texts(s)
        if s.role == "querier":
            query_texts(s)
            querier_task(s)
        else:
            task_tables(s)


def _server_app():
    from strategy.server_app import app

    return app


def _client_app():
    from silos.client_app import app

    return app


if __name__ == "__main__":
    sys.exit(main())
