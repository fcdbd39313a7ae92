"""Pairs side by side and the serving pipeline, measured in the deployment: one querier with 1, 2
and 3 providers.

    python -m deploy.bench_pairs [--providers 1 2 3] [--n-query 2000] [--batch-size 500]
                                 [--out reports/pairs] [KEY=VALUE ...]

One deployment (a SuperLink with TLS and SuperNode authentication, one SuperNode per silo, the
SuperExecs polling every 0.1 s) on the tests' tiny models and synthetic corpus: querier alice
(32-d), providers bob (64-d), carol (48-d) and dave (64-d). One ``flwr run`` per provider count,
restricted with ``pairs``, each into its own folder with ``alignment.reuse=false`` (every map is
fitted). Per run, from its ``run.json``: the alignment's wall time (the longest pair's: the pairs
align in the same rounds), the rounds of the alignment and of serving, and the serving rounds per
batch. All silos share this machine's cores, so compute that runs side by side on separate hosts
competes here; the report gives the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from deploy.local import PROJECT_DIR, Deployment

PROVIDERS = ["bob", "carol", "dave"]


def workload(root: Path, n_query: int, batch_size: int) -> list[str]:
    """The tiny models and corpus, a fourth silo, and a stream of batches."""
    sys.path.insert(0, str(PROJECT_DIR / "tests"))
    from tiny import save_tiny_models, tiny_overrides

    base = tiny_overrides(root, n_texts=400 + n_query, n_public=200, n_private=200,
                          n_query=n_query)
    return [*(o for o in base if not o.startswith("run.output_dir=")),
            "silos.dave.role=provider", f"silos.dave.model={save_tiny_models(root)['bert64']}",
            f"serve.batch_size={batch_size}", "alignment.reuse=false"]


def measure(run: dict) -> dict:
    pairs = [p for p in run["pairs"] if p["status"] == "ok"]
    if len(pairs) != len(run["pairs"]):
        failed = [p.get("error") for p in run["pairs"] if p["status"] != "ok"]
        raise RuntimeError(f"pairs failed: {failed}")
    batches = max(p["n_batches"] for p in pairs)
    return {
        "providers": len(pairs),
        "align_s": max(p["seconds"]["align"] for p in pairs),
        "serve_s": max(p["seconds"]["serve"] for p in pairs),
        "pairs_s": run["seconds"]["pairs"],
        "align_rounds": max(p["rounds"]["align"] for p in pairs),
        "serve_rounds": max(p["rounds"]["serve"] for p in pairs),
        "batches": batches,
        "serve_rounds_per_batch": max(p["rounds"]["serve"] for p in pairs) / batches,
        "pair_rounds": run["rounds"]["pairs"],
        "wall_ms_per_query": max(p["wall_ms_per_query"] for p in pairs),
        "compute_ms_per_query": max(p["latency_ms_per_query"] for p in pairs),
    }


def report(rows: list[dict], command: str, loads: list[tuple[float, float, float]]) -> str:
    one = next((r for r in rows if r["providers"] == 1), None)
    lines = [
        "# Pairs side by side and the serving pipeline (deployment)", "",
        f"`{command}` — {datetime.now(UTC).date()}, load average during the runs "
        f"{min(x[0] for x in loads):.1f}–{max(x[0] for x in loads):.1f} (1 min) on "
        f"{os.cpu_count()} cores.", "",
        "| providers | align s | align ÷ 1 provider | align rounds | serve rounds | batches | "
        "serve rounds / batch | rounds (all pairs) | serve wall ms/query | compute ms/query |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['align_s'] / one['align_s']:.2f}" if one else "—"
        lines.append(
            f"| {r['providers']} | {r['align_s']:.1f} | {ratio} | {r['align_rounds']} | "
            f"{r['serve_rounds']} | {r['batches']} | {r['serve_rounds_per_batch']:.2f} | "
            f"{r['pair_rounds']} | {r['wall_ms_per_query']:.1f} | {r['compute_ms_per_query']:.2f} |")
    lines += ["", "align s: the longest pair's alignment wall time (restore, upload, cross products,"
              " select, finish: the pairs share these rounds). serve rounds: plan, the first "
              "encryption, then per batch an evaluate round and a decrypt + next-encrypt round."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.bench_pairs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--providers", type=int, nargs="+", default=[1, 2, 3],
                        choices=[1, 2, 3], help="provider counts to run (default: %(default)s)")
    parser.add_argument("--n-query", type=int, default=2000, help="queries per pair")
    parser.add_argument("--batch-size", type=int, default=500, help="queries per batch")
    parser.add_argument("--root", type=Path, default=Path("outputs/bench-pairs"),
                        help="the deployment's folders and the runs' outputs")
    parser.add_argument("--out", type=Path, default=Path("reports/pairs"),
                        help="where pairs.json and report.md go (default: %(default)s)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    overrides = [*workload(root / "tiny", args.n_query, args.batch_size), *args.overrides]
    rows, loads = [], []
    with Deployment(root / "federation", ["alice", *PROVIDERS], poll_interval=0.1) as fed:
        fed.start()
        for k in args.providers:
            out = root / f"providers-{k}"
            pairs = "[" + ",".join(f"alice:{p}" for p in PROVIDERS[:k]) + "]"
            started = time.perf_counter()
            done = fed.run([*overrides, f"pairs={pairs}", f"run.output_dir={out}"])
            loads.append(os.getloadavg())
            if done.returncode != 0:
                raise SystemExit(f"flwr run with {k} provider(s) failed: exit {done.returncode}")
            row = measure(json.loads((out / "run.json").read_text()))
            row["run_s"] = time.perf_counter() - started
            rows.append(row)
            print(json.dumps(row), flush=True)
    command = "python -m deploy.bench_pairs " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pairs.json").write_text(json.dumps(
        {"command": command, "date": datetime.now(UTC).isoformat(timespec="seconds"),
         "load_average": loads, "rows": rows}, indent=2))
    text = report(rows, command.strip(), loads)
    (args.out / "report.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
