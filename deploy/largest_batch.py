"""How large a message goes through the deployment engine: serve batches of d ciphertexts, growing d.

    python -m deploy.largest_batch [--widths 768 3072] [--queries 300] [--root DIR]

A batch of queries travels feature-major: ciphertext j holds feature j of up to 4,096 queries, so the
``encrypt`` reply (and the ``evaluate`` request) is d_provider ciphertexts whatever the batch's size.
This starts one deployment (TLS, SuperNode authentication) with a tiny querier and one tiny BERT
provider per width d, serves every query in one batch, and prints per provider the largest message
of the pair (the batch), whether the pair succeeded, and the serve time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from deploy.local import PROJECT_DIR, Deployment


def build(root: Path, widths: list[int], queries: int) -> list[str]:
    """Tiny models (the querier 32-d, one provider per width) and a corpus, as config overrides."""
    sys.path.insert(0, str(PROJECT_DIR / "tests"))
    from tiny import make_tokenizer, tiny_bert, write_corpus

    tokenizer = make_tokenizer()
    overrides = ["silos.bob=null", "silos.carol=null", "serve.batch_size=4096",
                 f"dataset.n_query={queries}", "dataset.n_public=80", "dataset.n_private=60",
                 f"dataset.name={write_corpus(root / 'corpus.csv', 140 + queries + 20)}",
                 f"run.cache_dir={root / 'cache'}"]
    for name, width in [("alice", 32), *((f"d{w}", w) for w in widths)]:
        path = root / f"bert{width}"
        if not (path / "config.json").exists():
            tiny_bert(tokenizer, width, seed=width).save_pretrained(path)
            tokenizer.save_pretrained(path)
        overrides.append(f"silos.{name}.model={path}")
        if name != "alice":
            overrides.append(f"silos.{name}.role=provider")
    return overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.largest_batch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=int, nargs="+", default=[768, 3072],
                        help="provider embedding widths d (default: %(default)s)")
    parser.add_argument("--queries", type=int, default=300, help="queries, all in one batch")
    parser.add_argument("--root", type=Path, default=Path("outputs/largest-batch"))
    parser.add_argument("--timeout", type=float, default=1800, help="coordinator timeout per round")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    overrides = [*build(root, args.widths, args.queries), f"run.output_dir={root / 'out'}",
                 f"coordinator.timeout={args.timeout}", f"coordinator.serve_timeout={args.timeout}"]
    silos = ["alice", *(f"d{w}" for w in args.widths)]
    started = time.perf_counter()
    with Deployment(root / "federation", silos, poll_interval=0.1) as fed:
        fed.start()
        done = fed.run(overrides, timeout=args.timeout * 4)
    print(done.stdout[-2000:], done.stderr[-2000:])
    run = json.loads((root / "out" / "run.json").read_text())
    print(f"{'provider':>9}  {'d':>5}  {'batch message MB':>16}  {'align sent MB':>13}  status  serve s")
    for pair in run["pairs"]:
        d = int(pair["provider"][1:])
        batch = pair.get("bytes_in_per_query", 0) * pair.get("n_queries", 0)
        print(f"{pair['provider']:>9}  {d:>5}  {batch / 1e6:>16.1f}  "
              f"{pair.get('bytes_sent', {}).get('align', 0) / 1e6:>13.1f}  {pair['status']:>6}  "
              f"{pair.get('seconds', {}).get('serve', float('nan')):.1f}  {pair.get('error', '')}")
    print(f"({time.perf_counter() - started:.0f} s; command: python -m deploy.largest_batch "
          f"{' '.join(sys.argv[1:] if argv is None else argv)})")
    return 0 if all(p["status"] == "ok" for p in run["pairs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
