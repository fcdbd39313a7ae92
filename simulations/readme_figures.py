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


def evaluation(s: Section) -> list[str] | None:
    """The paper's evaluation: the encrypted classification, Table 2 against the paper's ratios,
    the random-pairing control, the scale curve and generation (each where the summary has it)."""
    path = s.reports / "evaluation" / "summary.json"
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    rows = [r for r in summary.get("classification", []) if r.get("status") == "ok"]
    if not rows:
        return None
    runs = summary.get("experiments", {})
    commands = list(dict.fromkeys(r["command"] for r in runs.values() if "command" in r))
    timed = [r for r in runs.values() if "seconds" in r]
    loads = [r[k] for r in timed for k in ("load_average_before", "load_average_after") if k in r]
    when = [f"{sum(r['seconds'] for r in timed) / 60:.0f} min"] if timed else []
    when.append(f"load average {min(loads):.1f} … {max(loads):.1f}" if loads
                else "load average not recorded")
    he = next((run.get("he") for run in summary.get("classification_runs", {}).values()
               if run.get("he")), None)
    chain = (f"CKKS N = {he['poly_modulus_degree']}, primes {he['coeff_mod_bit_sizes']}"
             if he else "CKKS parameters not recorded")
    lines = [f"**The paper's evaluation** (`{'`; `'.join(commands)}`; {', '.join(when)}; "
             f"[{s.link(path.parent)}]({s.link(path.parent / 'README.md')}), with 95 % bootstrap "
             "intervals), through the product's own silos, fitting and serving code. Encrypted "
             f"classification ({chain}):", "",
             "| task | querier → provider | texts served | native | encrypted | agreement with "
             "float64 | OOD AUROC, encrypted (MSP) |", "|---|---|---|---|---|---|---|"]
    ood = summary.get("ood", [])
    for r in rows:
        auroc = [o["auroc_encrypted"] for o in ood if o["task"] == r["task"]
                 and o.get("querier_model") == r["querier_model"]
                 and o.get("provider_model") == r["provider_model"]
                 and o.get("score", "msp") == "msp" and o.get("auroc_encrypted") is not None]
        lines.append(f"| {r['task']} | {r['querier_model']} → {r['provider_model']} "
                     f"| {r.get('n_queries', '—')} | {_ci(r, 'native_accuracy')} "
                     f"| {_ci(r, 'encrypted_accuracy')} | {r['agreement']:.4f} "
                     f"| {f'{auroc[0]:.3f}' if auroc else '—'} |")
    return [*lines, *_table2(summary), *_scale(summary), *_generation(summary)]


def _ci(row: dict, key: str) -> str:
    lo_hi = row.get(f"{key}_ci")
    if lo_hi is None:
        return f"{row[key]:.3f}"
    return f"{row[key]:.3f} [{lo_hi[0]:.3f}, {lo_hi[1]:.3f}]"


def _table2(summary: dict) -> list[str]:
    """Aligned accuracy with a map fitted off-domain (+ k in-domain texts) ÷ that with an in-domain
    map, per task and public corpus, beside the paper's; the control's collapse."""
    table = summary.get("table2", [])
    if not table:
        return []
    ks = sorted({int(c.rsplit("+", 1)[1]) for c in (r["condition"] for r in table) if "+" in c})
    n_models = len(summary.get("config", {}).get("domain", {}).get("models", []))
    paper = ", ".join(f"{name} {public / inside:.2f} → {with128 / inside:.2f}" for name, (
        inside, public, with128) in summary.get("paper_table2", {}).items())
    lines = ["", "**Table 2**: maps fitted on another domain's public texts, alone and + k in-domain "
             f"ones: aligned accuracy ÷ the in-domain map's (mean of {table[0]['n_pairs']} ordered "
             f"pairs of {n_models} models; control: shuffled public pairs). Paper: {paper}:", "",
             "| task (in-domain accuracy) | public corpus | alone | "
             + " | ".join(f"+{k}" for k in ks) + " | control |", "|---|---|---|"
             + "---|" * (len(ks) + 1)]
    for task in dict.fromkeys(r["task"] for r in table):
        mine = {r["condition"]: r for r in table if r["task"] == task}
        control = mine.get("control:shuffled")
        for corpus in dict.fromkeys(c.removeprefix("cross:").split("+")[0] for c in mine
                                    if c.startswith("cross:")):
            cells = [mine.get(f"cross:{corpus}{f'+{k}' if k else ''}") for k in (0, *ks)]
            lines.append(
                f"| {task} ({_ci(mine['in-domain'], 'aligned_accuracy')}) | {corpus} | "
                + " | ".join(f"{c['vs_in_domain']:.2f}" if c else "—" for c in cells) + " | "
                + (f"{control['aligned_accuracy']:.3f} (majority {control['majority_accuracy']:.3f})"
                   if control else "—") + " |")
    return lines


def _scale(summary: dict) -> list[str]:
    """CKA against model size (CKA is symmetric: each pair once), and the control's collapse."""
    import math

    rows, params = summary.get("scale", []), summary.get("scale_params", {})
    if not rows or not params:
        return []
    pairs = {frozenset((r["model_a"], r["model_b"])): r for r in rows}

    def correlation(chosen: list[dict]) -> float:
        xs = [math.log(params[r["model_a"]] * params[r["model_b"]]) for r in chosen]
        ys = [r["cka"] for r in chosen]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
        sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
        return sxy / math.sqrt(sxx * syy) if sxx and syy else float("nan")

    from silos.registry import PACKAGED_MODELS

    causal = [r for r in pairs.values() if all(
        m in PACKAGED_MODELS and PACKAGED_MODELS[m].causal for m in (r["model_a"], r["model_b"]))]
    top, low = (f(pairs.values(), key=lambda r: r["cka"]) for f in (max, min))
    among = (f", over the {len(causal)} of causal LMs {correlation(causal):+.2f}"
             if len(causal) > 2 else "")
    return ["", f"**Scale**: linear CKA among {len(params)} models "
            f"({_g(min(params.values()) / 1e6)}M … {_g(max(params.values()) / 1e6)}M parameters) "
            f"runs from {low['cka']:.2f} ({low['model_a']} ↔ {low['model_b']}) to "
            f"{top['cka']:.2f} ({top['model_a']} ↔ {top['model_b']}); its correlation with "
            f"log(parameters) over the {len(pairs)} pairs is {correlation(list(pairs.values())):+.2f}"
            f"{among}. Shuffled public pairs: R² "
            f"≤ {max(r['r2_control'] for r in rows):.2f}, top-1 retrieval "
            f"≤ {max(r['retrieval_control'] for r in rows):.3f} (chance "
            f"{rows[0]['chance_retrieval']:.3f})."]


def _generation(summary: dict) -> list[str]:
    gen = summary.get("generation", {})
    directions = gen.get("directions") or ([gen] if gen.get("model_a") else [])
    if not directions:
        return []
    by_pair: dict[tuple[str, str], list[dict]] = {}  # A ↔ B: its directions, A → B first
    for d in directions:
        reverse = (d["model_b"], d["model_a"])
        by_pair.setdefault(reverse if reverse in by_pair else (d["model_a"], d["model_b"]),
                           []).append(d)

    def both(fmt: str, key: str, ds: list[dict]) -> str:  # one figure where both round alike
        return " and ".join(dict.fromkeys(format(d[key], fmt) for d in ds))

    each = "; ".join(
        f"{a} {'↔' if len(ds) > 1 else '→'} {b} "
        + " and ".join(f"{d['top1_agreement']:.2f} / {d['top5_agreement']:.2f}" for d in ds)
        + f" (match {both('.2f', 'tokenizer_match_rate', ds)}, ppl"
        f" {both('.0f', 'median_cross_perplexity', ds)} vs {both('.1f', 'median_own_perplexity', ds)})"
        for (a, b), ds in by_pair.items())
    return ["", "**Generation**, A's token states mapped and read by B's LM head (top-1 / top-5 "
            "agreement with B, A → B and then B → A; tokenizer match; perplexity under B vs B's "
            f"own): {each}."]


SECTIONS = (crypto, cost, rounds, align_once, evaluation)


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
             f"as it ran. The default run, the encoders' speed and every detail: "
             f"[{link(performance)}]({link(performance)}).", ""]
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
