"""Align once, serve many: what a second run costs, and a 10,000-text serving killed and resumed.

    python -m simulations.bench_align_once [--out reports/align_once] [--skip-resume]

1. **Reuse.** The default run (``python -m simulations.run_local``, the packaged models and the
   benchmark preset) twice into one fresh output folder: the first fits every map under encryption
   and trains every head, the second reuses them (and skips embedding the public texts). Wall
   times of both, and whether their predictions are the same (labels; the largest difference of a
   probability, which CKKS noise and the flooding make nonzero).
2. **Resume.** A querier with 10,000 texts of its own (tweets of the packaged twitter-sentiment
   corpus, labelled), one provider whose task is that corpus' sentiment, public texts of the same
   corpus: the run is killed (SIGKILL, the whole process group) once the querier has written its
   first answered batches, then started again; every id must be answered exactly once.

Each run is a subprocess, as a user would start it; its wall time includes starting Ray. The
embedding cache (``run.cache_dir``) is shared with every other run on this machine: the report
says whether the first run found its embeddings there.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from silos.data import load_corpus

ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "HF_HUB_OFFLINE": "1"}


def run_local(overrides: list[str], log: Path, *, kill_when: Path | None = None,
              extra: tuple[str, ...] = ()) -> tuple[float, int]:
    """One ``python -m simulations.run_local`` subprocess: wall seconds and exit code. With
    ``kill_when``, the process group is killed as soon as that folder holds a batch file."""
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "simulations.run_local", *overrides,
                                 *extra],
                                stdout=out, stderr=subprocess.STDOUT, env=ENV,
                                start_new_session=True)
        if kill_when is None:
            code = proc.wait()
        else:
            while proc.poll() is None and len(list(kill_when.glob("*.safetensors"))) < 2:
                time.sleep(0.1)
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
            ray = Path(sys.executable).parent / "ray"  # Ray's own processes, if any outlived it
            subprocess.run([str(ray), "stop", "--force"], capture_output=True, env=ENV,
                           check=False)
    return time.perf_counter() - started, code


def predictions(out: Path) -> dict[str, list[dict]]:
    """Every predictions CSV of the querier, by provider (the ensemble included)."""
    found = {}
    for path in sorted((out / "silos").glob("*/predictions/*/*.csv")):
        with path.open() as f:
            found[f"{path.parent.name}/{path.stem}"] = list(csv.DictReader(f))
    return found


def reuse(root: Path) -> dict:
    out = root / "reuse"
    shutil.rmtree(out, ignore_errors=True)
    base = [f"run.output_dir={out}"]
    first_s, first_code = run_local(base, root / "reuse-1.log")
    first = predictions(out)
    first_report = json.loads((out / "report.json").read_text())
    second_s, second_code = run_local(base, root / "reuse-2.log")
    second = predictions(out)
    report = json.loads((out / "report.json").read_text())
    same_labels = all([r["label"] for r in first[k]] == [r["label"] for r in second[k]]
                      for k in first) and first.keys() == second.keys()
    max_diff = max(abs(float(a[c]) - float(b[c])) for k in first
                   for a, b in zip(first[k], second[k], strict=True) for c in a if c.startswith("p_"))
    return {
        "first_seconds": first_s, "second_seconds": second_s, "ratio": second_s / first_s,
        "exit_codes": [first_code, second_code],
        "first_maps": [p.get("map") for p in first_report["pairs"]],
        "second_maps": [p.get("map") for p in report["pairs"]],
        "first_phase_seconds": first_report["seconds"], "second_phase_seconds": report["seconds"],
        "same_labels": bool(same_labels), "max_probability_difference": max_diff,
        "files": sorted(first), "n_predictions": {k: len(v) for k, v in second.items()},
    }


def tweet_roles(data: Path, n_queries: int) -> dict[str, Path]:
    """The three roles from the packaged tweets (seeded): 800 public texts, 2,000 labelled ones of
    the provider's sentiment task, and ``n_queries`` labelled ones of the querier's, with ids."""
    import random

    tweets = load_corpus("twitter-sentiment")
    data.mkdir(parents=True, exist_ok=True)
    order = list(range(len(tweets)))
    random.Random(0).shuffle(order)
    public, task, queries = order[:800], order[800:2800], order[2800:2800 + n_queries]
    names = tweets.label_names

    def write(path: Path, rows: list[dict]) -> Path:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    return {
        "public": write(data / "public.jsonl", [{"text": tweets.texts[i]} for i in public]),
        "task": write(data / "sentiment.jsonl", [{"text": tweets.texts[i],
                                                   "label": names[tweets.labels[i]]} for i in task]),
        "queries": write(data / "mine.jsonl", [{"id": f"t{i}", "text": tweets.texts[i],
                                                 "label": names[tweets.labels[i]]}
                                                for i in queries]),
    }


def tweet_overrides(files: dict[str, Path], out: Path, batch: int) -> list[str]:
    """A run of :func:`tweet_roles`: querier alice (its task: sentiment), provider bob, no carol."""
    return [f"run.output_dir={out}", f"public.source={files['public']}",
            f"silos.alice.queries.source={files['queries']}", "silos.alice.task=sentiment",
            f"silos.bob.tasks.sentiment.source={files['task']}", "silos.carol=null",
            f"serve.batch_size={batch}"]


def resume(root: Path, n_queries: int, batch: int) -> dict:
    """Write the three roles from the packaged tweets, run, kill mid-serve, run again."""
    files = tweet_roles(root / "resume-data", n_queries)
    ids_wanted = [json.loads(line)["id"] for line in files["queries"].read_text().splitlines()]
    out = root / "resume"
    shutil.rmtree(out, ignore_errors=True)
    overrides = tweet_overrides(files, out, batch)
    parts = out / "silos" / "alice" / "predictions" / "sentiment" / ".bob.parts"
    # Your own data: the report is not refereed (the provider's model would embed all 10,000).
    killed_s, killed_code = run_local(overrides, root / "resume-killed.log", kill_when=parts)
    answered = len(list(parts.glob("*.safetensors")))
    again_s, again_code = run_local(overrides, root / "resume-again.log")
    report = json.loads((out / "report.json").read_text())
    (pair,) = report["pairs"]
    ids = [r["id"] for r in predictions(out)["sentiment/bob"]]
    return {
        "n_queries": n_queries, "batch_size": batch, "killed_after_seconds": killed_s,
        "killed_exit_code": killed_code, "batches_answered_before_kill": answered,
        "second_seconds": again_s, "second_exit_code": again_code,
        "status": pair["status"], "map": pair.get("map"), "n_resumed": pair.get("n_resumed"),
        "n_served": pair.get("n_served"), "encrypted_accuracy": pair.get("encrypted_accuracy"),
        "predicted_per_second": pair["n_served"] / pair["seconds"]["serve"],
        "ids_written": len(ids), "ids_unique": len(set(ids)),
        "every_id_once": sorted(ids) == sorted(ids_wanted),
    }


def render(results: dict) -> str:
    lines = ["# Align once, serve many", "", "Measured on this 2-core machine by "
             "`python -m simulations.bench_align_once` (each part: its command and the load "
             "average before and after it).", ""]
    if "reuse" in results:
        r = results["reuse"]
        lines += [
            "## A second run with unchanged data",
            "",
            f"`{r['command']}`; load average {r['loadavg_before']} before, {r['loadavg_after']} "
            "after.",
            "",
            "| run | wall s | maps | phases (s) |", "|---|---|---|---|",
            f"| first | {r['first_seconds']:.0f} | {', '.join(map(str, r['first_maps']))} | "
            + ", ".join(f"{k} {v:.0f}" for k, v in r["first_phase_seconds"].items()) + " |",
            f"| second | {r['second_seconds']:.0f} | {', '.join(map(str, r['second_maps']))} | "
            + ", ".join(f"{k} {v:.0f}" for k, v in r["second_phase_seconds"].items()) + " |",
            "",
            f"The second run took **{r['ratio']:.0%}** of the first's wall time (aim: at most "
            f"20 %). Predictions: labels {'identical' if r['same_labels'] else 'DIFFERENT'} in "
            f"every file ({', '.join(r['files'])}); the largest difference of a class "
            f"probability is {r['max_probability_difference']:.1e} (fresh CKKS noise and "
            "flooding in every run).",
            "",
        ]
    if "resume" in results:
        r = results["resume"]
        lines += [
            "## 10,000 texts, killed while serving, started again",
            "",
            f"`{r['command']}`; load average {r['loadavg_before']} before, {r['loadavg_after']} "
            "after.",
            "",
            f"- {r['n_queries']:,} labelled tweets of the querier, batches of {r['batch_size']}: "
            f"killed (SIGKILL, process group) after {r['killed_after_seconds']:.0f} s, with "
            f"{r['batches_answered_before_kill']} batches answered and on disk.",
            f"- Started again: {r['status']} in {r['second_seconds']:.0f} s, map {r['map']}, "
            f"{r['n_resumed']:,} answers kept, {r['n_served']:,} queries served.",
            f"- Ids written: {r['ids_written']:,}, unique {r['ids_unique']:,}; every id exactly "
            f"once: **{r['every_id_once']}**.",
            f"- Accuracy of the decrypted predictions (the querier's texts are labelled) "
            f"{r['encrypted_accuracy']:.3f}; the resumed serve ran at "
            f"{r['predicted_per_second']:.0f} queries/s of wall time.",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations.bench_align_once",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("reports/align_once"))
    parser.add_argument("--work", type=Path, default=Path("outputs/bench_align_once"),
                        help="the runs' output folders and logs")
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--skip-reuse", action="store_true")
    parser.add_argument("--skip-resume", action="store_true")
    args = parser.parse_args(argv)
    command = ("python -m simulations.bench_align_once " + " ".join(argv or sys.argv[1:])).strip()
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    for part, skip, measure in (("reuse", args.skip_reuse, lambda: reuse(args.work)),
                                ("resume", args.skip_resume,
                                 lambda: resume(args.work, args.queries, args.batch))):
        if skip:
            continue
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        result = {"command": command, "loadavg_before": load, **measure(),
                  "loadavg_after": " ".join(Path("/proc/loadavg").read_text().split()[:3])}
        print(json.dumps(result, indent=2), flush=True)
        (args.out / f"{part}.json").write_text(json.dumps(result, indent=2))
    # Each part keeps its own file (and command), so a part can be measured again alone.
    results = {part: json.loads((args.out / f"{part}.json").read_text())
               for part in ("reuse", "resume") if (args.out / f"{part}.json").exists()}
    (args.out / "report.md").write_text(render(results))
    print(f"report: {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
