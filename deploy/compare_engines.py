"""The same workload through Flower's simulation engine and its deployment engine, in one invocation.

    python -m deploy.compare_engines [--tiny] [--root DIR] [KEY=VALUE ...]

First ``python -m simulations.run_local`` (Ray, one process), then :class:`deploy.local.Deployment`
(a SuperLink with TLS and SuperNode authentication, one SuperNode per silo, ``flwr run``), with the
same config overrides and cache. Prints, per engine and pair, the coordinator's end-to-end serve time
per query (encrypt + evaluate + decrypt rounds and the report round, wall clock), the silos' compute
per query, bytes per query, and phase times. Embeddings are cached on disk by the first engine, so
compare ``prepare`` with that in mind; serving does not use the cache.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from deploy.local import PROJECT_DIR, Deployment

COLUMNS = ["engine", "pair", "status", "serve wall ms/query", "compute ms/query", "KiB/query",
           "align s", "prepare s", "run s"]


def tiny_workload(root: Path, n_query: int) -> list[str]:
    """Overrides for the test suite's tiny models and synthetic corpus (seconds of compute)."""
    sys.path.insert(0, str(PROJECT_DIR / "tests"))
    from tiny import tiny_overrides

    return [o for o in tiny_overrides(root, n_texts=200 + n_query, n_public=80, n_private=60,
                                      n_query=n_query) if not o.startswith("run.output_dir=")]


def rows(engine: str, run: dict, wall: float) -> list[list[str]]:
    out = []
    for p in run["pairs"]:
        seconds = p.get("seconds", {})
        out.append([
            engine, f"{p['querier']} → {p['provider']}", p.get("status", "?"),
            f"{p.get('wall_ms_per_query', float('nan')):.1f}",
            f"{p.get('latency_ms_per_query', float('nan')):.1f}",
            f"{p.get('bytes_per_query', float('nan')) / 1024:.1f}",
            f"{seconds.get('align', float('nan')):.1f}",
            f"{run['seconds'].get('prepare', float('nan')):.1f}", f"{wall:.0f}",
        ])
    return out


def table(lines: list[list[str]]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in lines)) for i, c in enumerate(COLUMNS)]
    fmt = "  ".join(f"{{:{w}}}" for w in widths)
    return "\n".join([fmt.format(*COLUMNS), fmt.format(*("-" * w for w in widths)),
                      *(fmt.format(*r) for r in lines)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.compare_engines", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--root", type=Path, default=Path("outputs/compare-engines"),
                        help="outputs of both engines, certificates, logs (default: %(default)s)")
    parser.add_argument("--tiny", type=int, default=0, metavar="N_QUERY",
                        help="use the tests' tiny models and synthetic corpus with N_QUERY queries")
    parser.add_argument("--poll-interval", type=float, default=0.1,
                        help="SuperExec task poll interval in seconds (Flower's default: 1)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    overrides = [*(tiny_workload(root / "tiny", args.tiny) if args.tiny else []), *args.overrides]
    results = []

    started = time.perf_counter()
    sim_out = root / "simulation"
    done = subprocess.run([sys.executable, "-m", "simulations.run_local", *overrides,
                           f"run.output_dir={sim_out}"], cwd=PROJECT_DIR)
    results += rows("simulation", json.loads((sim_out / "run.json").read_text()),
                    time.perf_counter() - started)
    print(f"simulation engine: exit {done.returncode}", flush=True)

    started = time.perf_counter()
    dep_out = root / "deployment"
    silos = _silo_names(overrides)
    with Deployment(root / "federation", silos, poll_interval=args.poll_interval) as fed:
        fed.start()
        run = fed.run([*overrides, f"run.output_dir={dep_out}"])
    print(f"deployment engine: exit {run.returncode}", flush=True)
    results += rows("deployment (TLS + node auth)", json.loads((dep_out / "run.json").read_text()),
                    time.perf_counter() - started)

    print("\n" + table(results))
    print(f"\ncommand: python -m deploy.compare_engines {' '.join(sys.argv[1:] if argv is None else argv)}")
    return 0


def _silo_names(overrides: list[str]) -> list[str]:
    from conf import active_silos, load_config

    return list(active_silos(load_config(overrides)))


if __name__ == "__main__":
    sys.exit(main())
