"""What serving costs the coordinator beyond the silos' compute, in the simulation, at full batches.

    python -m simulations.bench_serve [--queries 10000] [--batch-size 4096] [--out reports/serve]

The querier's 10,000 labelled tweets (the packaged twitter-sentiment corpus, the roles written as
in ``simulations.bench_align_once``), the packaged MiniLM querier and MPNet provider, batches of
4,096: one ``python -m simulations.run_local`` subprocess, unrefereed (your own data). From its
``run.json``: the coordinator's wall time over the serve phase per query (every serving round:
plan, encrypt, evaluate, decrypt + next encrypt, decrypt + report) against the silos' own compute
per query (encrypt + evaluate + decrypt), their ratio, and the serving rounds per batch.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

from simulations.bench_align_once import run_local, tweet_overrides, tweet_roles


def measure(root: Path, n_queries: int, batch: int) -> dict:
    files = tweet_roles(root / "data", n_queries)
    out = root / "serve"
    shutil.rmtree(out, ignore_errors=True)
    seconds, code = run_local(tweet_overrides(files, out, batch), root / "serve.log")
    if code != 0:
        raise SystemExit(f"the run failed (exit {code}); see {root / 'serve.log'}")
    (pair,) = json.loads((out / "run.json").read_text())["pairs"]
    if pair["status"] != "ok":
        raise SystemExit(f"the pair failed: {pair.get('error')}")
    return {
        "n_queries": pair["n_served"], "batch_size": batch, "batches": pair["n_batches"],
        "path": pair["path"], "wall_ms_per_query": pair["wall_ms_per_query"],
        "compute_ms_per_query": pair["latency_ms_per_query"],
        "ratio": pair["wall_ms_per_query"] / pair["latency_ms_per_query"],
        "serve_rounds": pair["rounds"]["serve"],
        "serve_rounds_per_batch": pair["rounds"]["serve"] / pair["n_batches"],
        "encrypt_ms_per_query": pair["encrypt_ms_per_query"],
        "evaluate_ms_per_query": pair["evaluate_ms_per_query"],
        "decrypt_ms_per_query": pair["decrypt_ms_per_query"],
        "bytes_per_query": pair["bytes_per_query"], "run_seconds": seconds,
        "load_average": os.getloadavg(),
    }


def report(row: dict, command: str) -> str:
    load = row["load_average"]
    return "\n".join([
        "# Serving: the coordinator's wall time against the silos' compute (simulation)", "",
        f"`{command}` — {datetime.now(UTC).date()}, load average {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f} (1 / 5 / 15 min) after the run, {os.cpu_count()} cores.", "",
        "| queries | batch | batches | path | serve wall ms/query | silos' compute ms/query | "
        "wall ÷ compute | serve rounds / batch | KiB/query |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {row['n_queries']:,} | {row['batch_size']:,} | {row['batches']} | {row['path']} | "
        f"{row['wall_ms_per_query']:.2f} | {row['compute_ms_per_query']:.2f} | "
        f"{row['ratio']:.2f} | {row['serve_rounds_per_batch']:.2f} | "
        f"{row['bytes_per_query'] / 1024:.1f} |", "",
        f"Compute: encrypt {row['encrypt_ms_per_query']:.2f}, evaluate "
        f"{row['evaluate_ms_per_query']:.2f}, decrypt {row['decrypt_ms_per_query']:.2f} ms per "
        "query. The wall time is the coordinator's clock over every serving round (the silos' "
        "compute, Ray's message passing, serialising the ciphertexts).", ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations.bench_serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=10_000, help="the querier's tweets")
    parser.add_argument("--batch-size", type=int, default=4096, help="queries per request")
    parser.add_argument("--root", type=Path, default=Path("outputs/bench_serve"),
                        help="the run's data, output and log")
    parser.add_argument("--out", type=Path, default=Path("reports/serve"),
                        help="where serve.json and report.md go (default: %(default)s)")
    args = parser.parse_args(argv)
    row = measure(args.root.resolve(), args.queries, args.batch_size)
    command = "python -m simulations.bench_serve " + " ".join(
        sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.json").write_text(json.dumps(
        {"command": command.strip(), "date": datetime.now(UTC).isoformat(timespec="seconds"),
         **row}, indent=2))
    text = report(row, command.strip())
    (args.out / "report.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
