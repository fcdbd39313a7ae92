"""Cost against work: wall time, payload bytes and Grid rounds of the protocol, per phase.

    python -m simulations.bench_cost [--quick] [--out reports/cost] [KEY=VALUE ...]

Three axes, each varied alone from a base configuration (one querier, providers of the querier's
task, a shared public corpus, the querier's own texts):

1. **queries**: the querier's texts (default 10² … 10⁵), one provider. The map is fitted once by a
   warm-up run and then reused, as the product does ("align once, serve many"): the points measure
   serving, and an alignment that only checks the stored map.
2. **providers**: providers of the task (default 1 … 4), each with its own model; every point is a
   fresh run (every map fitted).
3. **public**: public texts (default 10² … 10⁴); every point a fresh run.

Every run goes through the product: the coordinator (``strategy.coordinator.AlignmentCoordinator``,
through ``strategy.server_app.run_coordinator`` with the run config's defaults: the serving path
from the cost model, batches of ``serve.batch_size``, every reply re-randomised and flooded per the
providers' default policy) over the silos' own handlers in this process
(:class:`simulations.local_grid.LocalGrid`: no Ray, no SuperLink, no serialisation of the Flower
messages; what travels is counted, as the coordinator counts it, by ``protocol.payload_bytes``).
The grid counts its ``send_and_receive`` calls (Grid rounds) and times every message's handler, so
each phase's seconds and bytes come from the messages of that phase's actions whatever order the
coordinator sends them in.

The silos' encoders are random-weight one-layer BERT models, built from a config and saved under
``--work``, with a word-level tokenizer over a small synthetic vocabulary: a real LM embeds ~75-145
texts/s on this machine (reports/encoders), so 10⁵ queries would take longer than the whole
benchmark, while the cost of the cryptography depends on the dimensions (d, K, N), not on the
weights. Their width is MiniLM-L6's 384 on the queries axis (``--dim``) and 64 on the two others
(``--align-dim``), whose every point fits its maps: one encrypted fit at 384 → 384 takes 200-500 s
here under load, and those axes fit twelve (a power of two: the fit cuts d_out into powers of two,
and each part is one more protected reply per querier feature). Every text is embedded into the
product's embedding cache before the timed runs (the time it took is reported apart).

Per axis it fits the growth exponent of each phase's seconds and bytes (least-squares slope of
log cost against log work) and writes ``cost.json``, ``cost.csv``, ``report.md`` and ``cost.png``
to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conf import active_silos, load_config
from protocol import Action, actions_of, payload_bytes
from simulations.local_grid import LocalGrid
from simulations.tables import write_csv

AXES = ("queries", "providers", "public")
PHASES = ("discover", "prepare", "align", "serve", "ensemble")
# The phase of every action, as the coordinator's own ledger books them.
PHASE_OF = {
    Action.DESCRIBE: "discover", Action.PREPARE: "prepare",
    Action.RESTORE: "align", Action.UPLOAD: "align", Action.CROSS_PRODUCTS: "align",
    Action.SELECT: "align", Action.COSINE_PRODUCTS: "align", Action.FINISH: "align",
    Action.PLAN: "serve", Action.ENCRYPT: "serve", Action.EVALUATE: "serve",
    Action.DECRYPT: "serve", Action.REPORT: "serve", Action.ENSEMBLE: "ensemble",
}
PROVIDER_NAMES = ("bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan")
TASK = "topics"
# The axis' own measure of work, and the phase whose cost it should drive.
WORK_PHASE = {"queries": "serve", "providers": "total", "public": "align"}
COLUMNS = [
    "axis", "value", "queries", "providers", "public", "d_querier", "d_provider", "classes",
    "wall_s", "cpu_s", "discover_s", "prepare_s", "align_s", "serve_s", "ensemble_s",
    "align_bytes", "align_bytes_up", "align_bytes_down",
    "serve_bytes", "serve_bytes_up", "serve_bytes_down", "total_bytes",
    "rounds", "messages", "align_rounds", "serve_rounds", "maps", "paths", "n_served",
    "serve_ms_per_query", "serve_bytes_per_query", "loadavg_before", "loadavg_after",
]
METRICS = ("wall_s", "align_s", "serve_s", "align_bytes", "serve_bytes", "total_bytes", "rounds",
           "messages")

# The synthetic corpus: K topics of their own words, shared filler words.
N_TOPIC_WORDS, N_FILLER, TOPIC_WORDS_PER_TEXT, FILLER_PER_TEXT = 24, 40, 5, 7


# -- the grid ---------------------------------------------------------------------------------------
@dataclass
class Round:
    actions: list[str]
    seconds: list[float]  # each message's handler
    bytes_up: list[int]  # coordinator → silo, per message
    bytes_down: list[int]  # silo → coordinator, per reply


class CountingGrid(LocalGrid):
    """:class:`LocalGrid` that records every ``send_and_receive`` call (one Grid round): its
    messages' actions, each handler's seconds, and the payload bytes each way."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rounds: list[Round] = []

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        record = Round([], [], [], [])
        replies = []
        for message in messages:
            # A bundle (several requests for one silo) is one message: its actions joined by '+'.
            record.actions.append("+".join(
                a.value for a in actions_of(message.metadata.message_type, message.content)))
            record.bytes_up.append(payload_bytes(message.content))
            start = time.perf_counter()
            (reply,) = super().send_and_receive([message], timeout=timeout)
            record.seconds.append(time.perf_counter() - start)
            record.bytes_down.append(0 if reply.has_error() else payload_bytes(reply.content))
            replies.append(reply)
        self.rounds.append(record)
        return replies

    def by_phase(self) -> dict[str, dict[str, float]]:
        """Seconds, bytes each way, messages and rounds per phase (a round counts for every phase
        among its messages)."""
        out = {p: {"seconds": 0.0, "bytes_up": 0, "bytes_down": 0, "messages": 0, "rounds": 0}
               for p in PHASES}
        for r in self.rounds:
            phases = set()
            for action, seconds, up, down in zip(r.actions, r.seconds, r.bytes_up, r.bytes_down,
                                                 strict=True):
                phase = PHASE_OF[Action(action.split("+")[0])]  # a bundle: its first request's
                phases.add(phase)
                row = out[phase]
                row["seconds"] += seconds
                row["bytes_up"] += up
                row["bytes_down"] += down
                row["messages"] += 1
            for phase in phases:
                out[phase]["rounds"] += 1
        return out

    def by_action(self) -> dict[str, dict[str, float]]:
        """Messages, handler seconds and payload bytes each way per action."""
        out: dict[str, dict[str, float]] = {}
        for r in self.rounds:
            for action, seconds, up, down in zip(r.actions, r.seconds, r.bytes_up, r.bytes_down,
                                                 strict=True):
                row = out.setdefault(action, {"messages": 0, "seconds": 0.0, "bytes_up": 0,
                                              "bytes_down": 0})
                row["messages"] += 1
                row["seconds"] += seconds
                row["bytes_up"] += up
                row["bytes_down"] += down
        return out


# -- models and data --------------------------------------------------------------------------------
def vocabulary(classes: int) -> tuple[list[list[str]], list[str]]:
    topics = [[f"t{k}w{i}" for i in range(N_TOPIC_WORDS)] for k in range(classes)]
    return topics, [f"f{i}" for i in range(N_FILLER)]


def save_encoder(folder: Path, hidden: int, classes: int, seed: int) -> Path:
    """A random-weight one-layer BERT of width ``hidden`` (MiniLM-L6's shape at 384: 64-wide
    heads, a 4× feed-forward) with a word-level tokenizer over the corpus' words, saved for the
    silos to load by path (as any local transformers model)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    topics, filler = vocabulary(classes)
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
    vocab.update({w: i + len(vocab) for i, w in enumerate([w for ws in topics for w in ws] + filler)})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]",
                                        pad_token="[PAD]")
    torch.manual_seed(seed)
    heads = max(1, hidden // 64)
    while hidden % heads:
        heads -= 1
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=1,
                        num_attention_heads=heads, intermediate_size=4 * hidden,
                        max_position_embeddings=32, pad_token_id=0)
    BertModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def texts(n: int, classes: int, seed: int) -> tuple[list[str], list[str]]:
    """``n`` labelled synthetic texts: topic words of their class among filler words."""
    topics, filler = vocabulary(classes)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    words = np.concatenate([
        np.asarray(topics)[labels[:, None], rng.integers(0, N_TOPIC_WORDS,
                                                         (n, TOPIC_WORDS_PER_TEXT))],
        np.asarray(filler)[rng.integers(0, N_FILLER, (n, FILLER_PER_TEXT))]], axis=1)
    order = np.argsort(rng.random(words.shape), axis=1)
    words = np.take_along_axis(words, order, axis=1)
    return [" ".join(row) for row in words], [f"topic{k}" for k in labels]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tmp.replace(path)
    return path


@dataclass
class Workspace:
    """The benchmark's models, data files and runs under one folder."""

    root: Path
    dim: int
    classes: int
    n_private: int
    seed: int

    def model(self, index: int) -> Path:
        """Silo ``index``'s encoder (0: the querier), saved on first use."""
        folder = self.root / "models" / f"bert-l1-h{self.dim}-k{self.classes}-s{self.seed + index}"
        if not (folder / "config.json").exists():
            save_encoder(folder, self.dim, self.classes, self.seed + index)
        return folder

    def public(self, n: int) -> Path:
        rows, _ = texts(n, self.classes, self.seed + 101)
        return write_jsonl(self.root / "data" / f"public-{n}.jsonl", [{"text": t} for t in rows])

    def task(self) -> Path:
        rows, labels = texts(self.n_private, self.classes, self.seed + 202)
        return write_jsonl(self.root / "data" / f"task-{self.n_private}.jsonl",
                           [{"text": t, "label": y} for t, y in zip(rows, labels, strict=True)])

    def queries(self, n: int) -> Path:
        rows, labels = texts(n, self.classes, self.seed + 303)
        return write_jsonl(self.root / "data" / f"queries-{n}.jsonl",
                           [{"id": f"q{i}", "text": t, "label": y}
                            for i, (t, y) in enumerate(zip(rows, labels, strict=True))])

    def overrides(self, *, queries: int, providers: int, public: int, out: Path,
                  extra: list[str]) -> list[str]:
        """One querier (alice) and ``providers`` providers of the task; the rest is the product's
        defaults, and ``extra`` on top."""
        if not 1 <= providers <= len(PROVIDER_NAMES):
            raise ValueError(f"providers must be 1 … {len(PROVIDER_NAMES)}, got {providers}")
        task = self.task()
        out_list = [
            f"run.output_dir={out}", f"run.cache_dir={self.root / 'cache'}",
            f"public.source={self.public(public)}",
            "silos.alice.role=querier", f"silos.alice.model={self.model(0)}",
            f"silos.alice.queries.source={self.queries(queries)}", f"silos.alice.task={TASK}",
            # Embedding only (cached before the timed runs): one torch thread, which on this
            # shared 2-core machine embeds 3-10x faster than two that wait for each other.
            "encoder.batch_size=256", "encoder.threads=1",
        ]
        for i, name in enumerate(PROVIDER_NAMES):
            if i < providers:
                out_list += [f"silos.{name}.role=provider", f"silos.{name}.model={self.model(i + 1)}",
                             f"silos.{name}.tasks.{TASK}.source={task}"]
            elif name in load_config([]).silos:
                out_list.append(f"silos.{name}=null")
        return [*out_list, *extra]


def warm_cache(overrides: list[str]) -> float:
    """Embed every text each silo of this configuration reads into the product's embedding cache
    (as the silos would, same keys): seconds taken."""
    from silos.runtime import embed, load_source
    from silos.settings import SiloSettings

    cfg = load_config(overrides)
    start = time.perf_counter()
    for name in active_silos(cfg):
        s = SiloSettings.from_config(cfg, name)
        sources = [load_source(s.public, "public", labels="none")]
        if s.role == "querier":
            sources.append(load_source(s.queries, f"silos.{name}.queries", labels="optional"))
        sources += [load_source(source, f"silos.{name}.tasks.{task}") for task, source in s.tasks]
        for table in sources:
            embed(s.encoder, table.texts, s.cache_dir)
    return time.perf_counter() - start


# -- one run ----------------------------------------------------------------------------------------
def loadavg() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_seconds() -> float:
    """CPU seconds used so far by this process, its waited-for children and its live children
    (the silos' persistent crypto helpers; Linux ``/proc``): on a machine shared with other jobs
    the wall time grows with the load, this much less."""
    t = os.times()
    total = t.user + t.system + t.children_user + t.children_system
    me, tick = os.getpid(), os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == me:  # the parent pid; then utime and stime, in clock ticks
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


_RUN_IDS = iter(range(700_000, 800_000))


def run_once(overrides: list[str], log: Path) -> tuple[dict, CountingGrid, float]:
    """The whole protocol over a :class:`CountingGrid`: the coordinator's summary, the grid and
    the wall seconds. Raises if a pair failed or the run reports errors."""
    from flwr.supercore.task_identity import TaskIdentity

    from strategy.server_app import run_coordinator

    cfg = load_config(overrides)
    run_id = next(_RUN_IDS)
    for name, value in (("task_id", 1), ("run_id", run_id), ("node_id", 1)):
        setattr(TaskIdentity, name, value)  # Flower's Message needs them; its engines set them
    grid = CountingGrid(overrides, len(active_silos(cfg)), run_id)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        start = time.perf_counter()
        summary = run_coordinator(grid, cfg, run_id=run_id)
        wall = time.perf_counter() - start
    failed = [p for p in summary["pairs"] if p.get("status") != "ok"]
    if failed or summary["errors"]:
        raise RuntimeError(f"the run failed ({log}): errors {summary['errors']}, failed pairs "
                           f"{[(p['querier'], p['provider'], p.get('error')) for p in failed]}")
    return summary, grid, wall


def measure(ws: Workspace, axis: str, value: int, *, queries: int, providers: int, public: int,
            out: Path, extra: list[str], fresh: bool) -> dict:
    """One point: a run of the protocol, its cost by phase."""
    if fresh:
        shutil.rmtree(out, ignore_errors=True)
    overrides = ws.overrides(queries=queries, providers=providers, public=public, out=out,
                             extra=extra)
    embed_s = warm_cache(overrides)
    before, cpu = loadavg(), cpu_seconds()
    summary, grid, wall = run_once(overrides, out.parent / f"{out.name}-{axis}-{value}.log")
    after, cpu = loadavg(), cpu_seconds() - cpu
    phases = grid.by_phase()
    pairs = summary["pairs"]
    row = {"axis": axis, "value": value, "queries": queries, "providers": providers,
           "public": public, "d_querier": ws.dim, "d_provider": ws.dim, "classes": ws.classes,
           "wall_s": wall, "cpu_s": cpu, "embed_s_before": embed_s,
           **{f"{p}_s": phases[p]["seconds"] for p in PHASES}}
    for p in ("align", "serve"):
        row[f"{p}_bytes_up"], row[f"{p}_bytes_down"] = phases[p]["bytes_up"], phases[p]["bytes_down"]
        row[f"{p}_bytes"] = phases[p]["bytes_up"] + phases[p]["bytes_down"]
        row[f"{p}_rounds"] = phases[p]["rounds"]
    served = sum(int(p.get("n_served", 0)) for p in pairs)
    row.update(
        total_bytes=sum(phases[p]["bytes_up"] + phases[p]["bytes_down"] for p in PHASES),
        rounds=len(grid.rounds), messages=sum(len(r.actions) for r in grid.rounds),
        maps="+".join(sorted({str(p.get("map")) for p in pairs})),
        paths="+".join(sorted({str(p.get("path")) for p in pairs})),
        n_served=served, serve_ms_per_query=1000 * row["serve_s"] / max(served, 1),
        serve_bytes_per_query=row["serve_bytes"] / max(served, 1),
        loadavg_before=before, loadavg_after=after,
        phases=phases, actions=grid.by_action(), rounds_detail=[sorted(set(r.actions)) for r in grid.rounds],
        # The coordinator's own ledger (wall seconds per round, as it books them), for comparison.
        coordinator_seconds=_ledger_seconds(summary))
    print(f"{axis}={value}: wall {wall:.1f} s, align {row['align_s']:.1f} s / "
          f"{row['align_bytes'] / 2**20:.1f} MiB, serve {row['serve_s']:.1f} s / "
          f"{row['serve_bytes'] / 2**20:.1f} MiB, {row['rounds']} rounds, maps {row['maps']}, "
          f"load {after}", flush=True)
    return row


def fresh_run(ws: Workspace, done: dict[tuple, dict], axis: str, point: dict, out: Path,
              extra: list[str]) -> dict:
    """A fresh run of ``point`` (every map fitted), measured once per configuration: a later
    axis' point of the same configuration is that run (its ``run`` names it)."""
    key = (ws.dim, point["queries"], point["providers"], point["public"])
    if key not in done:
        row = measure(ws, axis, point.get(axis, 0), **point, out=out, extra=extra, fresh=True)
        done[key] = {**row, "run_dir": str(out)}
    return done[key]


def _ledger_seconds(summary: dict) -> dict[str, float]:
    total: dict[str, float] = {}
    for ledger in [summary.get("seconds", {}), *(p.get("seconds", {}) for p in summary["pairs"])]:
        for phase, seconds in ledger.items():
            total[phase] = total.get(phase, 0.0) + float(seconds)
    return total


# -- exponents ----------------------------------------------------------------------------------------
def slope(x: list[float], y: list[float]) -> float | None:
    """Least-squares slope of log y against log x; None with fewer than two points or a y ≤ 0."""
    if len(x) < 2 or len(set(x)) < 2 or min(y) <= 0:
        return None
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def exponents(rows: list[dict]) -> dict[str, dict]:
    """Per axis and metric: the fitted exponent over all points, and the slopes between
    consecutive points (where the growth is stepwise, the two differ)."""
    out = {}
    for axis in AXES:
        points = sorted((r for r in rows if r["axis"] == axis), key=lambda r: r["value"])
        if not points:
            continue
        x = [float(r["value"]) for r in points]
        out[axis] = {}
        for metric in METRICS:
            y = [float(r[metric]) for r in points]
            out[axis][metric] = {
                "exponent": slope(x, y),
                "local": [slope(x[i:i + 2], y[i:i + 2]) for i in range(len(x) - 1)]}
    return out


# -- outputs --------------------------------------------------------------------------------------------
def _fmt(value, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _num(x: float) -> str:
    """Three significant figures, without an exponent."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _mib(n: float) -> str:
    return _num(n / 2**20)


def markdown(result: dict) -> str:
    about, rows, exps = result["about"], result["points"], result["exponents"]
    lines = [
        "# Cost against work",
        "",
        f"Produced by `{about['command']}` on {about['date']} ({about['cpus']} cores; load average "
        f"(1 / 5 / 15 min) {about['loadavg_before']} before, {about['loadavg_after']} after; "
        f"{about['seconds']:.0f} s in all, {about.get('cpu_seconds', float('nan')):.0f} CPU "
        "seconds of this process and its helper processes). Each row's own load average and CPU "
        "seconds are in `cost.csv`.",
        *(f"The {axis} axis was measured again by `{again['command']}` on {again['date']} (load "
          f"average {again['loadavg_before']} before, {again['loadavg_after']} after), after the "
          "coordinator began running pairs side by side; its rows are that run's."
          for axis, again in about.get("remeasured", {}).items()),
        "",
        f"- **Encoders**: {about['encoder']}",
        f"- **Protocol**: {about['protocol']}",
        f"- **Measured**: {about['measured']}",
        "",
        "## Growth exponents",
        "",
        "Least-squares slope of log cost against log work over each axis' points (1: linear, "
        "0: flat); in brackets the slopes between consecutive points.",
        "",
        "| axis | work | wall s | align s | serve s | align bytes | serve bytes | total bytes "
        "| Grid rounds | messages |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for axis, metrics in exps.items():
        values = [r["value"] for r in rows if r["axis"] == axis]
        cells = []
        for metric in METRICS:
            e = metrics[metric]
            local = ", ".join(_fmt(v) for v in e["local"])
            cells.append(f"{_fmt(e['exponent'])} ({local})" if e["local"] else _fmt(e["exponent"]))
        lines.append(f"| {axis} | {min(values):,} … {max(values):,} | " + " | ".join(cells) + " |")
    lines += ["", "— : not fitted (a cost of zero: e.g. no alignment bytes where the map is "
              "reused).", "", *findings(result)]
    for axis in AXES:
        points = sorted((r for r in rows if r["axis"] == axis), key=lambda r: r["value"])
        if not points:
            continue
        lines += [
            "", f"## Against {axis}", "",
            f"{AXIS_TEXT[axis]}",
            "",
            "| d | queries | providers | public | wall s | prepare s | align s | serve s | align MiB "
            "| serve MiB | serve ms/query | serve KiB/query | rounds (align / serve) | messages "
            "| maps | paths | load after |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in points:
            lines.append(
                f"| {r['d_querier']} | {r['queries']:,} | {r['providers']} | {r['public']:,} "
                f"| {r['wall_s']:.1f} "
                f"| {r['prepare_s']:.2f} | {r['align_s']:.1f} | {r['serve_s']:.1f} "
                f"| {_mib(r['align_bytes'])} | {_mib(r['serve_bytes'])} "
                f"| {_num(r['serve_ms_per_query'])} | {_num(r['serve_bytes_per_query'] / 1024)} "
                f"| {r['rounds']} ({r['align_rounds']} / {r['serve_rounds']}) | {r['messages']} "
                f"| {r['maps']} | {r['paths']} | {r['loadavg_after']} |")
        if axis == "queries" and result.get("base_run"):
            w = result["base_run"]
            lines += ["", f"The base run that fitted the map ({w['queries']:,} queries, "
                          f"{w['public']:,} public texts, fresh): align {w['align_s']:.1f} s and "
                          f"{_mib(w['align_bytes'])} MiB in {w['align_rounds']} rounds, serve "
                          f"{w['serve_s']:.1f} s, wall {w['wall_s']:.1f} s."]
    lines += ["", "![cost against work](cost.png)", ""]
    return "\n".join(lines)


def findings(result: dict) -> list[str]:
    """What the exponents say, in numbers of this run."""
    rows, exps = result["points"], result["exponents"]
    out = []

    def axis_points(axis: str) -> list[dict]:
        return sorted((r for r in rows if r["axis"] == axis), key=lambda r: r["value"])

    q = axis_points("queries")
    if len(q) >= 2:
        lo, hi = q[0], q[-1]
        e = exps["queries"]
        top = e["serve_bytes"]["local"][-1]
        head = ("Serving grows with the queries in steps of a group, then linearly."
                if top is not None and top >= 0.8 else
                f"Serving grows as queries^{_fmt(e['serve_bytes']['exponent'])} in bytes.")
        out.append(
            f"- **{head}** "
            f"{lo['queries']:,} queries cost {lo['serve_s']:.1f} s and {_mib(lo['serve_bytes'])} "
            f"MiB, {hi['queries']:,} cost {hi['serve_s']:.1f} s and {_mib(hi['serve_bytes'])} MiB "
            f"({hi['serve_ms_per_query']:.3g} ms and {hi['serve_bytes_per_query'] / 1024:.3g} KiB "
            f"per query): between the two largest points the slope is "
            f"{_fmt(e['serve_s']['local'][-1])} in time and {_fmt(e['serve_bytes']['local'][-1])} "
            f"in bytes, against {_fmt(e['serve_s']['exponent'])} and "
            f"{_fmt(e['serve_bytes']['exponent'])} over the whole axis: a batched request costs "
            f"whole groups of {result['about']['he']['slots']:,} slots (paths taken: "
            f"{', '.join(sorted({r['paths'] for r in q}))}).")
    p = axis_points("providers")
    if len(p) >= 2:
        lo, hi = p[0], p[-1]
        e = exps["providers"]
        per = (hi["rounds"] - lo["rounds"]) / (hi["providers"] - lo["providers"])
        out.append(
            f"- **Every provider adds one alignment and one serving.** Bytes grow as "
            f"providers^{_fmt(e['total_bytes']['exponent'])}, wall time as "
            f"providers^{_fmt(e['wall_s']['exponent'])} ({lo['wall_s']:.0f} s with "
            f"{lo['providers']}, {hi['wall_s']:.0f} s with {hi['providers']}); Grid rounds go "
            f"from {lo['rounds']} to {hi['rounds']}, {per:.1f} more per provider (exponent "
            f"{_fmt(e['rounds']['exponent'])}): "
            + ("the coordinator runs the pairs one after another." if per >= 2 else
               "the coordinator sends the pairs' steps in shared rounds."))
    b = axis_points("public")
    if len(b) >= 2:
        lo, hi = b[0], b[-1]
        e = exps["public"]
        flat = (e["align_bytes"]["exponent"] or 0) < 0.3
        head = ("The alignment is nearly flat in the public texts over this range." if flat else
                f"The alignment grows as public^{_fmt(e['align_bytes']['exponent'])} in bytes.")
        out.append(
            f"- **{head}** "
            f"{lo['public']:,} texts: {lo['align_s']:.0f} s and {_mib(lo['align_bytes'])} MiB; "
            f"{hi['public']:,}: {hi['align_s']:.0f} s and {_mib(hi['align_bytes'])} MiB (exponents "
            f"{_fmt(e['align_s']['exponent'])} in time, {_fmt(e['align_bytes']['exponent'])} in "
            f"bytes; between the two largest points {_fmt(e['align_s']['local'][-1])} and "
            f"{_fmt(e['align_bytes']['local'][-1])}). The fit's cost is one ciphertext per "
            "querier feature per chunk of texts, and a chunk holds up to N/2 − R texts: it grows "
            "linearly only past a few chunks; serving does not depend on the public texts.")
    return out


AXIS_TEXT = {
    "queries": "One provider; the map fitted once by the base run (below) and reused by every "
               "point, as the product does (the alignment phase is then one round that checks "
               "the stored map). Serving sends a "
               "request of up to `serve.batch_size` queries at a time; on the batched path a "
               "request costs whole groups of N/2 slots, so cost grows in steps of 4,096 "
               "queries at N = 8192 and linearly beyond.",
    "providers": "Every point a fresh run (the base configuration's is the base run): one "
                 "encrypted alignment and one serving per provider, and the ensemble of the "
                 "providers' predictions.",
    "public": "One provider, every point a fresh run. The encrypted fit sends one ciphertext per "
              "querier feature (and the ones column) per chunk of up to N/2 − R public texts, for "
              "the fitting part and the held-out part: its cost is flat up to a chunk and grows "
              "in steps after it.",
}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = result["points"]
    axes_present = [a for a in AXES if any(r["axis"] == a for r in rows)]
    fig, panels = plt.subplots(1, len(axes_present), figsize=(5.2 * len(axes_present), 4.4),
                               squeeze=False)
    for panel, axis in zip(panels[0], axes_present, strict=True):
        points = sorted((r for r in rows if r["axis"] == axis), key=lambda r: r["value"])
        x = [r["value"] for r in points]
        twin = panel.twinx()
        colours = {"align": "tab:blue", "serve": "tab:orange", "wall": "tab:green",
                   "total": "tab:green"}
        for metric, marker, label in (("align_s", "o", "align s"), ("serve_s", "s", "serve s"),
                                      ("wall_s", "^", "wall s")):
            y = [r[metric] for r in points]
            if min(y) > 0:
                panel.plot(x, y, marker + "-", color=colours[metric.split("_")[0]], label=label)
        for metric, marker, label in (("align_bytes", "o", "align bytes"),
                                      ("serve_bytes", "s", "serve bytes"),
                                      ("total_bytes", "^", "total bytes")):
            y = [r[metric] for r in points]
            if min(y) > 0:
                twin.plot(x, y, marker + "--", color=colours[metric.split("_")[0]], alpha=0.55,
                          mfc="none", label=label)
        for ax in (panel, twin):
            ax.set_xscale("log")
            ax.set_yscale("log")
        panel.set_xticks(x, [f"{v:,}" for v in x])
        panel.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        e = result["exponents"][axis]
        phase = WORK_PHASE[axis]
        t_key = "wall_s" if phase == "total" else f"{phase}_s"
        b_key = "total_bytes" if phase == "total" else f"{phase}_bytes"
        panel.set_title(f"{axis}: {t_key} ∝ n^{_fmt(e[t_key]['exponent'])}, "
                        f"{b_key} ∝ n^{_fmt(e[b_key]['exponent'])}", fontsize=9)
        panel.set_xlabel(axis)
        panel.set_ylabel("seconds (solid)")
        twin.set_ylabel("payload bytes (dashed)")
        handles = panel.get_legend_handles_labels()
        more = twin.get_legend_handles_labels()
        panel.legend(handles[0] + more[0], handles[1] + more[1], fontsize=7, loc="upper left")
        panel.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"Cost against work ({result['about']['date']}, load "
                 f"{result['about']['loadavg_before']} → {result['about']['loadavg_after']})",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the benchmark ----------------------------------------------------------------------------------------
QUICK = {"dim": 16, "align_dim": 16, "queries": [4096, 8192, 16384], "providers": [1, 2],
         "public": [200, 5200], "base_queries": 4096, "base_public": 200, "n_private": 120}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m simulations.bench_cost", description=__doc__,
        epilog="The full run: under 20 min on this 2-core machine (more when other jobs load "
               "it: report.md records the load); --quick (d = 16, small axes) under a minute. "
               "KEY=VALUE pairs override conf/default.yaml for every run.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("reports/cost"),
                        help="cost.json, cost.csv, report.md and cost.png (default: %(default)s)")
    parser.add_argument("--work", type=Path, default=Path("outputs/bench_cost"),
                        help="models, data, embedding cache, run folders and logs "
                             "(default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a small grid for tests: {QUICK} unless given")
    parser.add_argument("--axes", nargs="+", choices=AXES, default=list(AXES))
    parser.add_argument("--queries", type=int, nargs="+", help="default 100 1000 10000 100000")
    parser.add_argument("--providers", type=int, nargs="+", help="default 1 2 3 4")
    parser.add_argument("--public", type=int, nargs="+", help="default 100 1000 10000")
    parser.add_argument("--base-queries", type=int, help="queries on the other axes (default 1000)")
    parser.add_argument("--base-public", type=int,
                        help="public texts on the other axes (default 1000)")
    parser.add_argument("--dim", type=int,
                        help="every silo's embedding width on the queries axis (default 384)")
    parser.add_argument("--align-dim", type=int,
                        help="every silo's embedding width on the providers and public axes, "
                             "where every point fits its maps (default 64: one encrypted fit "
                             "at 384 → 384 takes 200-500 s on this machine under load, and the "
                             "two axes fit 12)")
    parser.add_argument("--classes", type=int, default=5, help="K, the task's classes")
    parser.add_argument("--n-private", type=int, help="the providers' labelled texts (default 400)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--merge-into", type=Path, metavar="DIR",
                        help="replace the axes of DIR/cost.json with those of --out/cost.json "
                             "(an axis measured again) and write DIR's report anew")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: rewrite cost.csv, report.md and cost.png from "
                             "--out's cost.json (its command and figures unchanged)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides for every run, e.g. he.preset=n16384")
    args = parser.parse_args(argv)
    defaults = {"dim": 384, "align_dim": 64, "queries": [100, 1000, 10_000, 100_000],
                "providers": [1, 2, 3, 4],
                "public": [100, 1000, 10_000], "base_queries": 1000, "base_public": 1000,
                "n_private": 400}
    for key, value in (QUICK if args.quick else defaults).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.merge_into is not None:  # this run's axes replace those of a saved full run
        measured = json.loads((args.out / "cost.json").read_text())
        result = json.loads((args.merge_into / "cost.json").read_text())
        axes = set(measured["about"]["axes"])
        result["points"] = [p for p in result["points"] if p["axis"] not in axes] + [
            p for p in measured["points"] if p["axis"] in axes]
        about = measured["about"]
        result["about"].setdefault("remeasured", {}).update(
            {axis: {k: about[k] for k in ("command", "date", "loadavg_before", "loadavg_after")}
             for axis in axes})
        result["exponents"] = exponents(result["points"])
        write_outputs(result, args.merge_into)
        return 0
    if args.render:
        result = json.loads((args.out / "cost.json").read_text())
        result["exponents"] = exponents(result["points"])
        write_outputs(result, args.out)
        return 0
    command = " ".join(["python -m simulations.bench_cost", *argv])
    spaces = {d: Workspace(args.work.resolve(), d, args.classes, args.n_private, args.seed)
              for d in {args.dim, args.align_dim}}
    runs = args.work.resolve() / "runs"
    started, load_before, cpu = time.perf_counter(), loadavg(), cpu_seconds()
    rows, base_run = [], None
    base = {"queries": args.base_queries, "providers": 1, "public": args.base_public}
    done: dict[tuple, dict] = {}  # fresh runs by configuration: a base run serves every axis
    for axis in args.axes:
        ws = spaces[args.dim if axis == "queries" else args.align_dim]
        for value in sorted(getattr(args, axis)):
            point = {**base, axis: value}
            if axis == "queries":  # the map fitted once (the base run), reused by every point
                if base_run is None:
                    base_run = fresh_run(ws, done, "base", base, runs / f"d{ws.dim}-base",
                                       args.overrides)
                rows.append(measure(ws, axis, value, **point, out=Path(base_run["run_dir"]),
                                    extra=args.overrides, fresh=False))
            else:
                row = fresh_run(ws, done, axis, point, runs / f"d{ws.dim}-{axis}-{value}",
                                args.overrides)
                rows.append({**row, "axis": axis, "value": value})
    from crypto.params import CKKSParams

    cfg = load_config(args.overrides)
    params = CKKSParams.from_config(cfg.he)
    result = {
        "about": {
            "command": command,
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": loadavg(),
            "seconds": time.perf_counter() - started, "cpu_seconds": cpu_seconds() - cpu,
            "quick": args.quick,
            "dim": args.dim, "align_dim": args.align_dim, "classes": args.classes,
            "n_private": args.n_private,
            "base": base, "axes": {a: sorted(getattr(args, a)) for a in args.axes},
            "he": {"preset": str(cfg.he.preset), "poly_modulus_degree": params.poly_modulus_degree,
                   "coeff_mod_bit_sizes": list(params.coeff_mod_bit_sizes),
                   "slots": params.slots},
            "encoder": (f"every silo a random-weight one-layer BERT of width d = {args.dim} on "
                        f"the queries axis and d = {args.align_dim} on the providers and public "
                        "axes (MiniLM-L6's width and head size at 384), its own seed, built from a "
                        "config (no LM download), word-level tokenizer over "
                        f"{args.classes * N_TOPIC_WORDS + N_FILLER} synthetic words, "
                        f"{TOPIC_WORDS_PER_TEXT + FILLER_PER_TEXT} words per text; embeddings "
                        "cached before the timed runs (the crypto's cost depends on d, K and N, "
                        "not on the weights; a real LM embeds 75-145 texts/s here)"),
            "protocol": (f"the product's coordinator over the silos' handlers in one process "
                         f"(simulations.local_grid.LocalGrid); CKKS N = "
                         f"{params.poly_modulus_degree}, primes {list(params.coeff_mod_bit_sizes)}; "
                         f"serve.path={cfg.serve.path}, serve.batch_size={cfg.serve.batch_size}, "
                         f"alignment.workers={cfg.alignment.workers}; every reply re-randomised "
                         f"and flooded ({cfg.provider_policy.privacy_bits} bits, the providers' "
                         f"default policy); K = {args.classes} classes, {args.n_private} "
                         "labelled texts per provider"),
            "measured": ("seconds: each message's handler (querier and provider compute, "
                         "serialisation of ciphertexts, disk) summed by phase, and the run's wall "
                         "time; bytes: ciphertexts and contexts carried (protocol.payload_bytes) "
                         "on both legs through the coordinator, so a payload it relays (Enc(X̃), "
                         "the queries, the logits) counts on its way in and on its way out, as in "
                         "the coordinator's own ledger; rounds: the grid's send_and_receive "
                         "calls; messages: the messages in them"),
            "overrides": args.overrides,
        },
        "points": rows, "base_run": base_run, "exponents": exponents(rows),
    }
    write_outputs(result, args.out)
    print(f"report: {args.out / 'report.md'} ({result['about']['seconds']:.0f} s)")
    return 0


def write_outputs(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "cost.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    write_csv(out / "cost.csv", result["points"], COLUMNS)
    (out / "report.md").write_text(markdown(result))
    plot(result, out / "cost.png")


if __name__ == "__main__":
    sys.exit(main())
