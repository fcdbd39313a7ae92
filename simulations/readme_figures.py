"""The README's performance figures, generated from the committed reports.

    python -m simulations.readme_figures           # rewrite README.md's figures block
    python -m simulations.readme_figures --check   # exit 1 if that block is stale

Reads what each benchmark wrote under ``reports/`` (each where present) and renders its headline
figures, each with the command that produced it, its date and load average where the report records
them, and a link to the full report:

- ``reports/crypto/``: ``python -m simulations.bench_crypto`` (``README.md``'s first lines,
  ``head.csv``, ``fit.csv``);
- ``reports/cost/``: ``python -m simulations.bench_cost`` (``cost.json``);
- ``reports/align_once/``: ``python -m simulations.bench_align_once`` (``reuse.json``,
  ``resume.json``);
- ``reports/encoders/``: ``python -m simulations.bench_encoders`` (``report.md``, ``speed.csv``);
- ``reports/evaluation/``: ``python -m simulations.evaluate`` (``summary.json``).

The block sits between ``<!-- figures:start -->`` and ``<!-- figures:end -->``; everything outside
it is left as it is. Nothing here measures: rerun a benchmark to change a figure, then this.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
START, END = "<!-- figures:start -->", "<!-- figures:end -->"
COMMAND = "python -m simulations.readme_figures"


# -- helpers ----------------------------------------------------------------------------------------
def _rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _g(value: float, digits: int = 3) -> str:
    """``digits`` significant figures, thousands separated (2,772; 0.482; 12.2)."""
    value = float(value)
    if value == 0:
        return "0"
    exponent = int(f"{abs(value):e}".split("e")[1])
    decimals = max(0, digits - 1 - exponent)
    return f"{round(value, decimals):,.{decimals}f}"


def _range(values: list[float], fmt: str = "{:.3f}") -> str:
    lo, hi = min(values), max(values)
    return fmt.format(lo) if lo == hi else f"{fmt.format(lo)} … {fmt.format(hi)}"


def _signed_range(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:+.3f}" if lo == hi else f"{lo:+.3f} … {hi:+.3f}"


def _load(before: str | None, after: str | None) -> str:
    if before and after:
        return f"load average {before} → {after}"
    if before:
        return f"load average {before} at the start"
    return "load average not recorded"


class Section:
    """One report's lines in the block; ``link(path)`` is a report's path relative to the README."""

    def __init__(self, reports: Path, readme: Path, link: Callable[[Path], str]) -> None:
        self.reports = reports
        self.docs = readme.parent / "docs"  # the README's own docs/, beside it
        self.link = link


# -- the sections -------------------------------------------------------------------------------------
def crypto(s: Section) -> list[str] | None:
    folder = s.reports / "crypto"
    if not (folder / "head.csv").exists() or not (folder / "README.md").exists():
        return None
    header = (folder / "README.md").read_text()
    command = re.search(r"Produced by `([^`]+)`", header)
    when = re.search(r"\((\d{4}-\d{2}-\d{2}), (\d+) cores; 1-min load average ([\d.]+) before, "
                     r"([\d.]+) after", header)
    head = _rows(folder / "head.csv")
    if not head:
        return None
    smallest_n = min(int(r["N"]) for r in head)

    def pick(path: str, d: int, k: int, batch: int | None = None) -> dict | None:
        rows = [r for r in head if r["path"] == path and int(r["d"]) == d and int(r["K"]) == k
                and int(r["N"]) == smallest_n and r["protection"] in ("on", "-")
                and (batch is None or int(r["batch"]) == batch)]
        return max(rows, key=lambda r: int(r["batch"])) if rows else None

    where = (f"{when.group(1)}, {_load(when.group(3), when.group(4))} (1 min)" if when
             else "date and load average not recorded")
    lines = [f"**The encrypted linear algebra**, every reply protected "
             f"(`{command.group(1) if command else 'python -m simulations.bench_crypto'}`; "
             f"{where}; [{s.link(folder)}]({s.link(folder / 'README.md')})), "
             f"N = {smallest_n}:", "",
             "| path | d → K | batch | ms/query | queries/s | KiB in + out per query |",
             "|---|---|---|---|---|---|"]
    batches = sorted({int(r["batch"]) for r in head})
    largest = batches[-1]
    for path, d, k, batch in (("naive", 384, 5, None), ("single", 384, 5, None),
                              ("batched", 384, 5, largest), ("batched", 4096, 5, largest)):
        r = pick(path, d, k, batch)
        if r is None:
            continue
        kib = (float(r["bytes_in_per_query"]) + float(r["bytes_out_per_query"])) / 1024
        lines.append(f"| {path} | {d} → {k} | {int(r['batch']):,} "
                     f"| {_g(r['latency_ms_per_query'])} | {_g(r['queries_per_s'])} | {_g(kib)} |")
    lines.append("")
    lines.append("`naive`: TenSEAL's `CKKSVector.matmul`, as public demos use it, unprotected.")
    fits = _rows(folder / "fit.csv") if (folder / "fit.csv").exists() else []
    if fits:
        r = max(fits, key=lambda r: int(r["n"]))
        lines[-1] += (f" The encrypted fit Enc(X̃)ᵀY of n = {int(r['n']):,} public texts, "
                      f"{r['d_q']} → {r['d_p']}, on {r['workers']} processes: {_g(r['seconds'])} s, "
                      f"{float(r['bytes_up']) / 2**20:.0f} MiB up, "
                      f"{float(r['bytes_down']) / 2**20:.0f} MiB down.")
    return lines


def cost(s: Section) -> list[str] | None:
    path = s.reports / "cost" / "cost.json"
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    about, rows, exps = result["about"], result["points"], result["exponents"]

    def exponent(axis: str, metric: str, *, top: bool = False) -> str:
        entry = exps.get(axis, {}).get(metric, {})
        value = entry.get("exponent")
        text = "—" if value is None else f"{value:.2f}"
        if top and entry.get("local") and entry["local"][-1] is not None:
            text += f" ({entry['local'][-1]:.2f})"
        return text

    def largest(axis: str) -> dict | None:
        points = [r for r in rows if r["axis"] == axis]
        return max(points, key=lambda r: r["value"]) if points else None

    def smallest(axis: str) -> dict | None:
        points = [r for r in rows if r["axis"] == axis]
        return min(points, key=lambda r: r["value"]) if points else None

    took = f"{about['seconds'] / 60:.0f} min"
    if about.get("cpu_seconds") is not None:
        took += f" ({about['cpu_seconds'] / 60:.0f} min of CPU)"
    lines = [f"**Cost against work**, the product's coordinator and silos in one process "
             f"(`{about['command']}`; {about['date']}, {took}, "
             f"{_load(about['loadavg_before'], about['loadavg_after'])}; "
             f"[{s.link(path.parent)}]({s.link(path.parent / 'report.md')})): growth exponents "
             "(slope of log cost against log work; in brackets between the two largest points), "
             "random-weight encoders of width "
             f"d = {about['dim']} (queries) and {about['align_dim']} (providers, public texts):",
             "", "| work | phase | seconds ∝ work^ | bytes ∝ work^ | at the largest point |",
             "|---|---|---|---|---|"]
    if (r := largest("queries")) is not None:
        lines.append(
            f"| queries, {smallest('queries')['value']:,} … {r['value']:,} | serve "
            f"| {exponent('queries', 'serve_s', top=True)} "
            f"| {exponent('queries', 'serve_bytes', top=True)} "
            f"| {_g(r['serve_s'])} s, {_g(r['serve_ms_per_query'])} ms and "
            f"{_g(r['serve_bytes_per_query'] / 1024)} KiB per query |")
    if (r := largest("public")) is not None:
        lines.append(
            f"| public texts, {smallest('public')['value']:,} … {r['value']:,} | align "
            f"| {exponent('public', 'align_s', top=True)} "
            f"| {exponent('public', 'align_bytes', top=True)} "
            f"| {_g(r['align_s'])} s, {_g(r['align_bytes'] / 2**20)} MiB |")
    if (r := largest("providers")) is not None:
        first = smallest("providers")
        lines.append(
            f"| providers, {first['value']} … {r['value']} | whole run "
            f"| {exponent('providers', 'wall_s')} | {exponent('providers', 'total_bytes')} "
            f"| {_g(r['wall_s'])} s, {_g(r['total_bytes'] / 2**20)} MiB; Grid rounds "
            f"{first['rounds']} → {r['rounds']} (∝ work^{exponent('providers', 'rounds')})"
            + (f"; measured again: `{again['command']}`"
               if (again := about.get("remeasured", {}).get("providers")) else "") + " |")
    return lines


def align_once(s: Section) -> list[str] | None:
    folder = s.reports / "align_once"
    reuse_file, resume_file = folder / "reuse.json", folder / "resume.json"
    if not reuse_file.exists() and not resume_file.exists():
        return None
    link = f"[{s.link(folder)}]({s.link(folder / 'report.md')})"
    parts = []
    if reuse_file.exists():
        r = json.loads(reuse_file.read_text())
        same = "the same labels in every predictions file" if r["same_labels"] else \
            "DIFFERENT labels"
        parts.append(f"a second default run reuses every map and head: {r['second_seconds']:.0f} s "
                     f"against the first's {r['first_seconds']:.0f} s ({r['ratio']:.0%}), {same} "
                     f"(`{r['command']}`; {_load(r['loadavg_before'], r['loadavg_after'])})")
    if resume_file.exists():
        r = json.loads(resume_file.read_text())
        once = "every id answered exactly once" if r["every_id_once"] else \
            "NOT every id answered once"
        parts.append(f"a serving of {r['n_queries']:,} queries killed midway resumes with "
                     f"{r['n_resumed']:,} answers kept and {once} "
                     f"(`{r['command']}`; {_load(r['loadavg_before'], r['loadavg_after'])})")
    return [f"**Align once, serve many** ({link}): " + "; ".join(parts) + "."]


def rounds(s: Section) -> list[str] | None:
    """Pairs side by side (deployment) and serving at full batches (simulation)."""
    pairs_file, serve_file = s.reports / "pairs" / "pairs.json", s.reports / "serve" / "serve.json"
    parts = []
    if pairs_file.exists():
        r = json.loads(pairs_file.read_text())
        one, *_, last = sorted(r["rows"], key=lambda x: x["providers"])
        loads = [x[0] for x in r["load_average"]]
        link = f"[{s.link(pairs_file.parent)}]({s.link(pairs_file.parent / 'report.md')})"
        parts.append(
            f"in the deployment, {last['providers']} providers align in "
            f"{last['align_s'] / one['align_s']:.2f}× the wall time of one and in the same "
            f"{last['pair_rounds']} rounds, and a stream costs "
            f"{(last['serve_rounds'] - 2) / last['batches']:.0f} rounds a batch after 2 to start "
            f"(`{r['command'].strip()}`; load average {min(loads):.1f}–{max(loads):.1f}; {link})")
    if serve_file.exists():
        r = json.loads(serve_file.read_text())
        link = f"[{s.link(serve_file.parent)}]({s.link(serve_file.parent / 'report.md')})"
        parts.append(
            f"in the simulation at batches of {r['batch_size']:,}, the coordinator's serve wall "
            f"time is {r['ratio']:.2f}× the silos' compute ({r['wall_ms_per_query']:.2f} against "
            f"{r['compute_ms_per_query']:.2f} ms per query; `{r['command']}`; load average "
            f"{r['load_average'][0]:.1f}; {link})")
    if not parts:
        return None
    return ["**Rounds**, all pairs at once and a pipelined serving: " + "; ".join(parts) + "."]


def encoders(s: Section) -> list[str] | None:
    folder = s.reports / "encoders"
    if not (folder / "speed.csv").exists():
        return None
    text = (folder / "report.md").read_text() if (folder / "report.md").exists() else ""
    command = re.search(r"Command: `([^`]+)`", text)
    triple = r"(\d+\.\d+ \d+\.\d+ \d+\.\d+)"
    load = re.search(rf"before: {triple}, after: {triple}", text)
    speed = _rows(folder / "speed.csv")
    threads = max(int(r["threads"]) for r in speed)
    models = list(dict.fromkeys(r["model"] for r in speed))
    variants = [v for v in ("float32", "bfloat16", "int8") if any(r["variant"] == v for r in speed)]
    command = command.group(1) if command else "python -m simulations.bench_encoders"
    lines = [f"**Encoders on the CPU** (`{command}`; "
             f"{_load(*(load.groups() if load else (None, None)))} (1, 5, 15 min); "
             f"[{s.link(folder)}]({s.link(folder / 'report.md')})): texts/s on {threads} threads, "
             "in brackets the mean cosine to float32:", "",
             "| model | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]
    for model in models:
        cells = []
        for variant in variants:
            r = next((r for r in speed if r["model"] == model and r["variant"] == variant
                      and int(r["threads"]) == threads), None)
            if r is None:
                cells.append("—")
            elif variant == "float32":
                cells.append(_g(r["texts_per_s"]))
            else:
                cells.append(f"{_g(r['texts_per_s'])} ({float(r['mean_cosine_to_float32']):.3f})")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines


def evaluation(s: Section) -> list[str] | None:
    path = s.reports / "evaluation" / "summary.json"
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    experiment = summary.get("experiments", {}).get("classification", {})
    command = experiment.get("command", summary.get("command", "python -m simulations.evaluate"))
    load = experiment.get("load_average_before")
    seconds = experiment.get("seconds")
    rows = [r for r in summary.get("classification", []) if r.get("status") == "ok"]
    if not rows:
        return None
    ood = summary.get("ood", [])
    he = next((run.get("he") for run in summary.get("classification_runs", {}).values()
               if run.get("he")), None)
    chain = (f"CKKS N = {he['poly_modulus_degree']}, primes {he['coeff_mod_bit_sizes']}"
             if he else "CKKS parameters not recorded")
    current = _current_chain()
    if he and current is not None and list(he["coeff_mod_bit_sizes"]) != current:
        doc = s.docs / "evaluation.md"
        chain += f" (the preset's chain is now {current}: [docs/evaluation.md]({s.link(doc)}))"
    when = []
    if seconds is not None:
        when.append(f"{seconds / 60:.0f} min")
    when.append(f"load average {load:.1f} at its start" if load is not None
                else "load average not recorded")
    lines = [f"**The paper's evaluation**, every ordered pair of "
             f"{len({r['querier_model'] for r in rows})} packaged models through the product "
             f"(`{command}`; {', '.join(when)}; {chain}; "
             f"[{s.link(path.parent)}]({s.link(path.parent / 'README.md')})):", "",
             "| task | pairs | native accuracy | encrypted accuracy | encrypted − native "
             "| agreement with float64 | OOD AUROC, encrypted (MSP) |",
             "|---|---|---|---|---|---|---|"]
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        aurocs = [o["auroc_encrypted"] for o in ood if o["task"] == task
                  and o.get("score", "msp") == "msp" and o.get("auroc_encrypted") is not None]
        lines.append(
            f"| {task} | {len(mine)} | {_range([r['native_accuracy'] for r in mine])} "
            f"| {_range([r['encrypted_accuracy'] for r in mine])} "
            f"| {_signed_range([r['encrypted_accuracy'] - r['native_accuracy'] for r in mine])} "
            f"| {min(r['agreement'] for r in mine):.4f} (min) "
            f"| {_range(aurocs) if aurocs else '—'} |")
    return lines


def _current_chain() -> list[int] | None:
    try:
        from conf import load_config

        return [int(b) for b in load_config(["he.preset=n8192"]).he.coeff_mod_bit_sizes]
    except Exception:  # a report is rendered without the config if need be
        return None


SECTIONS = (crypto, cost, rounds, align_once, encoders, evaluation)


# -- the block --------------------------------------------------------------------------------------------
def render(reports: Path, readme: Path) -> str:
    """The block, both markers included, for a README at ``readme`` (links relative to it)."""
    def link(path: Path) -> str:
        return Path(os.path.relpath(path.resolve(), readme.resolve().parent)).as_posix()

    section = Section(reports, readme, link)
    performance = section.docs / "performance.md"
    lines = [START, "",
             f"Generated from {link(reports)}/ by `{COMMAND}` (the tests fail when it is stale): "
             "each figure names its command and the load average of this shared 2-core machine "
             f"as it ran. The default run and every detail: [{link(performance)}]"
             f"({link(performance)}).", ""]
    for make in SECTIONS:
        part = make(section)
        if part:
            lines += [*part, ""]
    return "\n".join([*(_wrap(line) for line in lines), END])


def _wrap(line: str, width: int = 100) -> str:
    """A paragraph wrapped as the README's hand-written ones are; table rows and markers kept."""
    if line.startswith(("|", "<!--")) or len(line) <= width:
        return line
    glue = "\x00"  # a command in backticks stays on one line (copy-pasteable, greppable)
    kept = re.sub(r"`[^`]*`", lambda m: m.group(0).replace(" ", glue), line)
    return textwrap.fill(kept, width, break_long_words=False,
                         break_on_hyphens=False).replace(glue, " ")


def replace_block(text: str, block: str) -> str:
    if START not in text or END not in text:
        raise ValueError(f"no {START} … {END} block")
    head, rest = text.split(START, 1)
    return head + block + rest.split(END, 1)[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readme", type=Path, default=PROJECT_DIR / "README.md")
    parser.add_argument("--reports", type=Path, default=PROJECT_DIR / "reports")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if the README's block differs from the reports")
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    try:
        updated = replace_block(text, render(args.reports, args.readme))
    except ValueError as err:
        print(f"error: {args.readme}: {err}", file=sys.stderr)
        return 2
    if args.check:
        if updated != text:
            print(f"{args.readme}'s figures block is stale: run {COMMAND}", file=sys.stderr)
            return 1
        print(f"{args.readme}: figures up to date")
        return 0
    if updated != text:
        args.readme.write_text(updated)
        print(f"rewrote the figures block of {args.readme}")
    else:
        print(f"{args.readme}: figures already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
