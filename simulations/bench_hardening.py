"""What output hardening costs, and what it buys against extraction of the provider's head.

    python -m simulations.bench_hardening [--synthetic] [--out reports/hardening]

Serving cost: the querier's queries, mapped into the provider's space, go through the encrypted
batched path (``crypto.head``) with each hardening option; it measures encrypted accuracy, agreement
with the unhardened encrypted predictions, and encrypt + evaluate + decrypt (+ policy) ms per query.
Options: the provider's noise (its policy's ``logit_noise``: enforced by the provider, a plaintext add)
and the querier's output policy (``serve.output_top_k``, ``serve.output_decimals``: applied after
decryption, protects the querier's consumers only).

Query budget: the provider's, kept as it keeps it (``silos.budget``: checked before a request is
computed, charged once answered, a locked and fsynced file). The queries go in several batched
requests, first with no limit, then with a budget of half their query slots (a batched request
costs whole groups of N/2 slots, ``crypto.query_capacity``): it measures what the budget does (the
requests past it are refused before any ciphertext is read; the querier gets the answers to the
rest only) and what its bookkeeping costs per request.

Extraction: a querier that chooses its inputs recovers a linear head ``V, c`` by least squares on
the logits it decrypts. For query budgets B and noise levels it fits ``V, c`` from B noisy logit
vectors (in plaintext: the logits are exactly what the provider releases, noise included) and
reports the extracted head's relative error and its agreement with the real head on the queries.

Attacks on the ciphertexts (``simulations.attacks``, run on this task's head): what the same
querier gets from the replies themselves when it keeps its encryption randomness and decrypts every
slot, with the reply protection off (the bare computation) and on (the default), in one run: the
queries each attack needs for a copy of the head agreeing with it on 95 % of random queries.

Data: by default the packaged models (``minilm-l6`` → ``mpnet-base`` on ``bbc-news``, the default
config; embeddings come from the cache in ``run.cache_dir`` after a first run), the map fitted in
plaintext with the ridge alpha chosen on the held-out public texts, as the protocol does under
encryption (the encrypted fit equals it to ~5e-7, README); ``--synthetic`` uses random data
(seconds, for tests). Writes ``hardening.csv``, ``budget.csv``, ``extraction.csv``,
``attacks.csv`` and ``README.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conf import load_config
from crypto import (
    CkksKit,
    CKKSParams,
    EncryptedLinearHead,
    decrypt_logits,
    encrypt_queries,
    query_capacity,
)
from silos.budget import QueryBudget, QueryBudgetExceeded
from silos.output_policy import OutputPolicy
from simulations.bench_attacks import SINGLE_SETTINGS, Bench
from simulations.tables import write_csv

HARDENING_COLUMNS = ["option", "enforced_by", "encrypted_accuracy", "accuracy_change",
                     "agreement_with_unhardened", "ms_per_query", "ms_change", "n_queries"]
BUDGET_COLUMNS = ["query_budget", "requests", "queries", "answered_requests", "refused_requests",
                  "answered_queries", "slots_charged", "encrypted_accuracy_answered",
                  "bookkeeping_ms_per_request"]
EXTRACTION_COLUMNS = ["noise_std", "budget", "budget_over_d", "relative_error",
                      "agreement_with_head"]


@dataclass
class Task:
    """Aligned queries Z (in the provider's space), their labels, the head V, c, and the probe
    distribution an attacker draws chosen queries from."""

    name: str
    Z: np.ndarray
    labels: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    max_abs: float


def synthetic_task(n: int = 600, d: int = 48, k: int = 4, seed: int = 0) -> Task:
    rng = np.random.default_rng(seed)
    coef = rng.normal(size=(d, k)) * 3 / np.sqrt(d)
    intercept = rng.normal(size=k) * 0.1
    Z = rng.uniform(-1, 1, (n, d))
    labels = (Z @ coef + intercept + rng.normal(0, 0.5, (n, k))).argmax(1)
    return Task(f"synthetic (n={n}, d={d}, K={k})", Z, labels, coef, intercept, 1.0)


def real_task(overrides: list[str]) -> Task:
    """The default run's querier and provider on the benchmark preset's texts, in plaintext
    (embeddings from the cache): the map fitted as the protocol fits it, the head as the
    provider trains it."""
    from conf import load_config
    from silos.alignment import AffineMap, augment, fit_quality
    from silos.data import encode_labels
    from silos.head import LinearHead
    from silos.runtime import embed, public_space
    from silos.settings import SiloSettings
    from simulations.benchmark import benchmark_overrides, benchmark_rows

    overrides = [*overrides, "run.output_dir=/tmp/secure-align-bench-hardening"]
    cfg = load_config(overrides)
    rows, _ = benchmark_rows(cfg)
    cfg = load_config([*overrides, *benchmark_overrides(cfg)])  # the preset's files, named
    names = {s.role: name for name in cfg.silos if (s := cfg.silos[name]) is not None}
    q, p = (SiloSettings.from_config(cfg, names[role]) for role in ("querier", "provider"))
    xs, ys = public_space(q), public_space(p)
    x_scale, y_scale = float(xs["scale"][0]), float(ys["scale"][0])
    xa_val = augment(xs["val"])
    y_sq = float(np.sum(ys["val"].astype(np.float64) ** 2))
    r2 = {a: fit_quality(AffineMap(a).fit(xs["fit"], ys["fit"]).augmented_coef(),
                         xtx=xa_val.T @ xa_val, xty=xa_val.T @ ys["val"], y_sq_sum=y_sq,
                         n_samples=len(xa_val))
          for a in q.alphas}
    alpha = max(r2, key=r2.get)
    x, y = np.vstack([xs["fit"], xs["val"]]), np.vstack([ys["fit"], ys["val"]])
    mapped = AffineMap(alpha).fit(x, y)
    task = encode_labels([r["label"] for r in rows["task"]])
    head = LinearHead(l2=p.head_l2, max_iter=p.head_max_iter).fit(
        embed(p.encoder, [r["text"] for r in rows["task"]], p.cache_dir) / y_scale,
        task["labels"], classes=task["label_names"])
    known = [r for r in rows["queries"] if r["label"] in head.classes_]
    labels = np.asarray([head.classes_.index(r["label"]) for r in known])
    Z = mapped.transform(embed(q.encoder, [r["text"] for r in known], q.cache_dir) / x_scale)
    return Task(f"{q.encoder.model} → {p.encoder.model} on {cfg.dataset.name} ({len(Z)} "
                f"queries, d={Z.shape[1]}, K={head.coef_.shape[1]}, alpha={alpha:g})",
                Z, labels, head.coef_, head.intercept_, float(np.abs(ys["fit"]).max()))


def serve(task: Task, querier: CkksKit, provider: CkksKit, *, noise: float = 0.0,
          policy: OutputPolicy | None = None, reps: int = 3) -> tuple[list[np.ndarray], float]:
    """Encrypted logits of every query (one batched request) with the option, per repetition
    (each draws fresh noise); the best ms/query."""
    head = EncryptedLinearHead(task.coef, task.intercept)
    n, k = len(task.Z), task.coef.shape[1]
    best, every = float("inf"), []
    for _ in range(reps):
        start = time.perf_counter()
        blobs = encrypt_queries(querier, task.Z, path="batched", n_classes=k)
        out = head.evaluate(provider, blobs, path="batched", n=n, noise_std=noise)
        logits = decrypt_logits(querier, out, path="batched", n=n, n_classes=k)
        if policy is not None:
            logits = policy.apply(logits)
        best = min(best, time.perf_counter() - start)
        every.append(logits)
    return every, 1000 * best / n


def budget_rows(task: Task, querier: CkksKit, provider: CkksKit, *, requests: int) -> list[dict]:
    """The task's queries in ``requests`` batched requests, served as a provider serves them
    (silos.provider: the budget checked before the computation, charged after), with no limit
    and then with a budget of half their query slots."""
    head = EncryptedLinearHead(task.coef, task.intercept)
    k = task.coef.shape[1]
    parts = [p for p in np.array_split(np.arange(len(task.Z)), requests) if len(p)]
    costs = [query_capacity("batched", len(p), provider.slots) for p in parts]
    rows = []
    for limit in (None, sum(costs) // 2):
        with tempfile.TemporaryDirectory() as state_dir:
            budget = QueryBudget(state_dir, limit)
            answered, correct, refused, bookkeeping = 0, 0, 0, 0.0
            for part, cost in zip(parts, costs, strict=True):
                blobs = encrypt_queries(querier, task.Z[part], path="batched", n_classes=k)
                start = time.perf_counter()
                try:
                    budget.check("querier", cost)
                except QueryBudgetExceeded:  # refused before any ciphertext is read
                    refused += 1
                    bookkeeping += time.perf_counter() - start
                    continue
                bookkeeping += time.perf_counter() - start
                out = head.evaluate(provider, blobs, path="batched", n=len(part))
                start = time.perf_counter()
                budget.charge("querier", cost)  # a locked, fsynced write
                bookkeeping += time.perf_counter() - start
                logits = decrypt_logits(querier, out, path="batched", n=len(part), n_classes=k)
                answered += len(part)
                correct += int((logits.argmax(1) == task.labels[part]).sum())
            rows.append({"query_budget": "unlimited" if limit is None else limit,
                         "requests": len(parts), "queries": len(task.Z),
                         "answered_requests": len(parts) - refused, "refused_requests": refused,
                         "answered_queries": answered, "slots_charged": budget.used("querier"),
                         "encrypted_accuracy_answered": round(correct / answered, 4) if answered
                         else "", "bookkeeping_ms_per_request":
                         round(1000 * bookkeeping / len(parts), 3)})
        print(rows[-1], flush=True)
    return rows


def kits() -> tuple[CkksKit, CkksKit]:
    """A querier's kit at the default parameters and the provider's from its public context."""
    querier = CkksKit.generate(CKKSParams.from_config(load_config([]).he))
    return querier, CkksKit.from_public(querier.public_bytes())


def hardening_rows(task: Task, querier: CkksKit, provider: CkksKit, noises: list[float],
                   top_ks: list[int], decimals: list[int], reps: int) -> list[dict]:
    serve(task, querier, provider, reps=1)  # warm-up: the first run pays one-off costs
    base, base_ms = serve(task, querier, provider, reps=reps)
    base_pred = base[0].argmax(1)
    base_acc = float((base_pred == task.labels).mean())
    options = [("none", "—", {})]
    options += [(f"noise std {s:g}", "provider", {"noise": s}) for s in noises]
    options += [(f"top-{k}", "querier", {"policy": OutputPolicy(top_k=k)}) for k in top_ks]
    options += [(f"round to {d} decimals", "querier", {"policy": OutputPolicy(decimals=d)})
                for d in decimals]
    rows = []
    for name, who, kwargs in options:
        logits, ms = (base, base_ms) if name == "none" else serve(task, querier, provider,
                                                                  reps=reps, **kwargs)
        # Means over the repetitions (fresh noise each); ties after rounding go to the first
        # class, as a consumer's argmax would.
        preds = [x.argmax(1) for x in logits]
        acc = float(np.mean([(p == task.labels).mean() for p in preds]))
        agree = float(np.mean([(p == base_pred).mean() for p in preds]))
        rows.append({"option": name, "enforced_by": who, "encrypted_accuracy": round(acc, 4),
                     "accuracy_change": round(acc - base_acc, 4),
                     "agreement_with_unhardened": round(agree, 4),
                     "ms_per_query": round(ms, 4), "ms_change": round(ms - base_ms, 4),
                     "n_queries": len(task.Z)})
        print(rows[-1], flush=True)
    return rows


def extraction_rows(task: Task, noises: list[float], budget_ratios: list[float],
                    seed: int = 0) -> list[dict]:
    """A querier with B chosen queries recovers V, c by least squares on the (noisy) logits."""
    rng = np.random.default_rng(seed)
    d = task.coef.shape[0]
    true_pred = (task.Z @ task.coef + task.intercept).argmax(1)
    rows = []
    for noise in noises:
        for ratio in budget_ratios:
            budget = max(2, round(ratio * (d + 1)))
            probes = rng.uniform(-task.max_abs, task.max_abs, (budget, d))
            released = probes @ task.coef + task.intercept
            if noise > 0:
                released = released + np.clip(rng.normal(0, noise, released.shape),
                                              -6 * noise, 6 * noise)
            # Minimum-norm least squares: the best a querier can do without prior knowledge.
            solution = np.linalg.lstsq(np.hstack([probes, np.ones((budget, 1))]), released,
                                       rcond=None)[0]
            coef, intercept = solution[:-1], solution[-1]
            error = np.linalg.norm(coef - task.coef) / np.linalg.norm(task.coef)
            agree = float(((task.Z @ coef + intercept).argmax(1) == true_pred).mean())
            rows.append({"noise_std": noise, "budget": budget,
                         "budget_over_d": round(budget / (d + 1), 3),
                         "relative_error": float(f"{error:.3g}"), "agreement_with_head": agree})
    return rows


ATTACK_COLUMNS = ["path", "attack", "protection", "logit_noise", "queries_needed", "max_queries",
                  "agreement", "max_abs_error"]


def attack_rows(task: Task, noises: list[float], max_queries: int) -> list[dict]:
    """The ciphertext attacks on this task's head, protection off and on (see the docstring)."""
    d, k = task.coef.shape
    bench = Bench(d, k, 2000, 0.95, 0, head=EncryptedLinearHead(task.coef, task.intercept))
    rows = bench.batched_rows(noises, ["off", "default"], max_queries)
    rows += bench.single_rows(noises, list(SINGLE_SETTINGS), max_queries)
    return rows


def attack_markdown(rows: list[dict], max_queries: int) -> str:
    lines = ["\n## Attacks on the ciphertexts of this head (protection off, then on)\n",
             f"Queries needed for a copy that agrees with the head on 95 % of 2,000 random queries "
             f"(\"not reached\": not within {max_queries}); the batched solves are one-shot "
             "(one request of one query). `python -m simulations.bench_attacks` has every "
             "protection step on its own.\n",
             "| path | attack | protection | logit noise | queries needed | agreement | max abs error |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        needed = r["queries_needed"] if r["queries_needed"] != "" else "not reached"
        agreement = f"{r['agreement']:.3f}" if r["agreement"] != "" else ""
        error = f"{r['max_abs_error']:.2g}" if r["max_abs_error"] != "" else ""
        lines.append(f"| {r['path']} | {r['attack']} | {r['protection']} | {r['logit_noise']} "
                     f"| {needed} | {agreement} | {error} |")
    return "\n".join(lines) + "\n"


def budget_markdown(rows: list[dict]) -> str:
    lines = ["\n## The query budget, as the provider keeps it\n",
             "The queries in batched requests, each charged its whole groups of N/2 query slots "
             "(`crypto.query_capacity`), served with no limit and with a budget of half their "
             "slots: a request past the budget is refused before any ciphertext is read. "
             "Bookkeeping: the check before and the locked, fsynced charge after each request "
             "(`silos/budget.py`). What a budget buys against extraction: the next table.\n",
             "| query budget (slots) | requests | answered | refused | queries answered "
             "| slots charged | encrypted acc (answered) | bookkeeping ms/request |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = f"{r['encrypted_accuracy_answered']:.4f}" if r["answered_queries"] else "—"
        lines.append(f"| {r['query_budget']} | {r['requests']} | {r['answered_requests']} | "
                     f"{r['refused_requests']} | {r['answered_queries']} of {r['queries']} | "
                     f"{r['slots_charged']} | {acc} | {r['bookkeeping_ms_per_request']:.2f} |")
    return "\n".join(lines) + "\n"


def markdown(task: Task, hardening: list[dict], budget: list[dict], extraction: list[dict],
             command: str, load: str) -> str:
    logits = np.sort(task.Z @ task.coef + task.intercept, axis=1)
    lines = ["# Output hardening: cost and what it buys\n",
             f"Measured by `{command}` on {task.name}; machine load: `{load}.\n",
             f"Scale of the logits, to read the noise levels by: standard deviation "
             f"{logits.std():.3g}, mean margin between the two largest "
             f"{np.mean(logits[:, -1] - logits[:, -2]):.3g}.\n",
             "## Cost (encrypted batched path, N=8192)\n",
             "Accuracy and agreement: means over the repetitions (fresh noise each). ms/query: "
             "the best repetition of encrypt + evaluate + decrypt (+ the policy) for one batch "
             "of every query; differences of a few tenths of a ms are timing noise on this shared "
             "machine. The agreement column of the extraction table is measured on the same "
             "queries.\n",
             "| option | enforced by | encrypted acc | Δ acc | agreement with unhardened "
             "| ms/query | Δ ms/query |", "|---|---|---|---|---|---|---|"]
    for r in hardening:
        lines.append(f"| {r['option']} | {r['enforced_by']} | {r['encrypted_accuracy']:.4f} | "
                     f"{r['accuracy_change']:+.4f} | {r['agreement_with_unhardened']:.4f} | "
                     f"{r['ms_per_query']:.3f} | {r['ms_change']:+.3f} |")
    lines.append(budget_markdown(budget))
    d = task.coef.shape[0]
    lines += ["", f"## Extraction of the head by least squares (d = {d}, so d + 1 = {d + 1} "
              "chosen queries determine a noiseless linear head)\n",
              "| noise std | budget (queries) | budget / (d+1) | relative error of V "
              "| extracted head agrees with the real one |", "|---|---|---|---|---|"]
    for r in extraction:
        lines.append(f"| {r['noise_std']:g} | {r['budget']} | {r['budget_over_d']:g} | "
                     f"{r['relative_error']:.3g} | {r['agreement_with_head']:.4f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m simulations.bench_hardening",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides for the real task (e.g. silos.carol=null)")
    parser.add_argument("--synthetic", action="store_true", help="random data instead of models")
    parser.add_argument("--out", default="reports/hardening")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.01, 0.1, 0.5, 1.0])
    parser.add_argument("--top-k", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--decimals", type=int, nargs="+", default=[2, 1, 0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0, 10.0],
                        help="attacker budgets as multiples of d + 1")
    parser.add_argument("--budget-requests", type=int, default=4,
                        help="batched requests the queries go in, with and without a budget")
    parser.add_argument("--attack-queries", type=int, default=16,
                        help="queries each ciphertext attack may send before it is 'not reached'")
    parser.add_argument("--reps", type=int, default=5,
                        help="repetitions per option: best latency, mean accuracy")
    return parser.parse_args(argv)


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = _uptime()
    task = synthetic_task() if args.synthetic else real_task(
        args.overrides or ["silos.carol=null"])
    print(f"task: {task.name}", flush=True)
    querier, provider = kits()
    hardening = hardening_rows(task, querier, provider, args.noise, args.top_k, args.decimals,
                               args.reps)
    budget = budget_rows(task, querier, provider, requests=args.budget_requests)
    extraction = extraction_rows(task, [0.0, *args.noise], args.budgets)
    attacks = attack_rows(task, [0.0, *args.noise[:1]], args.attack_queries)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "hardening.csv", hardening, HARDENING_COLUMNS)
    write_csv(out / "budget.csv", budget, BUDGET_COLUMNS)
    write_csv(out / "extraction.csv", extraction, EXTRACTION_COLUMNS)
    write_csv(out / "attacks.csv", attacks, ATTACK_COLUMNS)
    load = f"{load_before}` at the start, `{_uptime()}` at the end"
    command = "python -m simulations.bench_hardening " + " ".join(argv or sys.argv[1:])
    (out / "README.md").write_text(markdown(task, hardening, budget, extraction, command.strip(),
                                            load)
                                   + attack_markdown(attacks, args.attack_queries))
    print((out / "README.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
