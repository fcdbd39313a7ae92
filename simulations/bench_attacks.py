"""How many queries a semi-honest querier needs to copy the provider's head, attack by attack.

    python -m simulations.bench_attacks [--d 32] [--k 5] [--out reports/attacks]

For each attack of ``simulations.attacks`` on its path (c1 and noise solves on the batched path,
the slot solve on the single path, the cross-product solve on the fitting), each protection of the
reply (off, each single step of ``crypto.privacy``, the default) and each level of logit noise
(the provider's ``noise_std``), it counts the queries the attack needs for a copy of a random head
(V, c) that agrees (argmax) with it on ``--agreement`` of ``--eval`` random queries, or reports
"not reached" within ``--max-queries``; next to it the baseline, least squares on the decrypted
logits alone. The fitting has no argmax: its row reports the largest error of the recovered Y.
Writes ``attacks.csv`` and ``README.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from conf import load_config
from crypto import (
    CkksKit,
    CKKSParams,
    CrossProductPacking,
    EncryptedLinearHead,
    SinglePlan,
    decrypt_logits,
    encrypt_queries,
)
from crypto.privacy import CircuitPrivacy
from simulations.attacks import (
    PROTECTIONS,
    CrossProductModel,
    Recovered,
    SlotModel,
    batched_server,
    c1_lattice_solve,
    c1_solve,
    cross_product_solve,
    inflated_noise_solve,
    logits_baseline,
    noise_solve,
    protection,
    single_replies,
    single_server,
    slot_solve,
)
from simulations.tables import write_csv

COLUMNS = ["path", "attack", "protection", "logit_noise", "queries_needed", "max_queries",
           "agreement", "max_abs_error", "solve_consistent", "seconds", "note"]

# The batched path's attacks; the last one is a malicious querier's (it inflates its own noise).
ATTACKS = (("c1 solve", c1_solve), ("noise solve", noise_solve),
           ("inflated-noise solve (malicious)", inflated_noise_solve))

# The single path's and the fitting's settings: the layout that masks partial sums (complete fold,
# one block) is part of the protection there, next to crypto.privacy.
SINGLE_SETTINGS = {"off": (False, "off"), "privacy, partial fold": (False, "default"),
                   "default": (True, "default")}
FIT_SETTINGS = {"off": (False, "off"), "privacy, several blocks": (False, "default"),
                "default": (True, "default")}


def schedule(max_queries: int) -> list[int]:
    """Query counts tried: every count up to 24, then steps of ~10 % (the count reported is the
    first of these that reaches the target)."""
    out = list(range(1, min(max_queries, 24) + 1))
    while out[-1] < max_queries:
        out.append(min(max_queries, max(out[-1] + 1, int(out[-1] * 1.1))))
    return out


class Bench:
    """One querier, one provider kit per rotation set, one random head, one evaluation set."""

    def __init__(self, d: int, k: int, n_eval: int, target: float, seed: int,
                 head: EncryptedLinearHead | None = None) -> None:
        self.d, self.k, self.target = d, k, target
        self.rng = np.random.default_rng(seed)
        self.querier = CkksKit.generate(CKKSParams.from_config(load_config().he))
        slots = self.querier.slots
        if head is None:  # logits of std ~1.7 on U(-1, 1)^d
            head = EncryptedLinearHead(self.rng.normal(size=(d, k)) * 3 / np.sqrt(d),
                                       self.rng.normal(size=k) * 0.1)
        self.head = head
        self.Z_eval = self.rng.uniform(-1, 1, (n_eval, d))
        steps = {*SinglePlan(d, k, slots).rotation_steps,
                 *SinglePlan(d, k, slots, complete_fold=False).rotation_steps}
        self.batched = CkksKit.from_public(self.querier.public_bytes())
        self.single = CkksKit.from_public(self.querier.public_bytes(sorted(steps)))

    def queries(self, n: int) -> np.ndarray:
        return self.rng.uniform(-1, 1, (n, self.d))

    def row(self, path: str, attack: str, prot: str, noise: float, result: Recovered | None,
            needed: int | None, max_queries: int, seconds: float, note: str = "") -> dict:
        agreement = result.agreement(self.head, self.Z_eval) if result is not None else ""
        error = result.max_error(self.head.coef, self.head.intercept) if result is not None else ""
        return {"path": path, "attack": attack, "protection": prot, "logit_noise": noise,
                "queries_needed": "" if needed is None else needed, "max_queries": max_queries,
                "agreement": agreement, "max_abs_error": error,
                "solve_consistent": "" if result is None else result.consistent,
                "seconds": round(seconds, 2), "note": note}

    def scan(self, solve, max_queries: int) -> tuple[int | None, Recovered]:
        """Smallest count in the schedule whose copy reaches the target, and that copy (or the
        copy at ``max_queries``)."""
        result = None
        for q in schedule(max_queries):
            result = solve(q)
            if result.agreement(self.head, self.Z_eval) >= self.target:
                return q, result
        return None, result

    # -- batched ----------------------------------------------------------------------------------
    def batched_rows(self, noises: list[float], protections: list[str],
                     max_queries: int) -> list[dict]:
        rows = []
        for noise in noises:
            for prot in protections:
                for name, attack in ATTACKS:
                    start = time.perf_counter()
                    serve = batched_server(self.head, self.batched,
                                           protection(self.batched, prot),
                                           noise_std=noise, rng=self.rng)
                    result = attack(self.querier, serve, self.d, self.k)
                    ok = result.agreement(self.head, self.Z_eval) >= self.target
                    rows.append(self.row("batched", name, prot, noise, result, 1 if ok else None,
                                         1, time.perf_counter() - start,
                                         "" if ok else "one request; more give the same solve"))
                    print(rows[-1], flush=True)
            start = time.perf_counter()  # baseline: one request of max_queries queries
            Z = self.queries(max_queries)
            blobs = encrypt_queries(self.querier, Z, path="batched", n_classes=self.k)
            reply = self.head.evaluate(self.batched, blobs, path="batched", n=len(Z),
                                       noise_std=noise, rng=self.rng,
                                       privacy=CircuitPrivacy(self.batched))
            L = decrypt_logits(self.querier, reply, path="batched", n=len(Z), n_classes=self.k)
            needed, result = self.scan(lambda q, Z=Z, L=L: logits_baseline(Z[:q], L[:q]),
                                       max_queries)
            rows.append(self.row("batched", "logits baseline", "default", noise, result, needed,
                                 max_queries, time.perf_counter() - start))
            print(rows[-1], flush=True)
        return rows

    def lattice_rows(self, noises: list[float], protections: list[str], d: int,
                     k: int) -> list[dict]:
        """The c1 solve through the rescale (LLL, pure Python: a small head of its own)."""
        rng = np.random.default_rng(self.rng.integers(2**32))
        head = EncryptedLinearHead(rng.normal(size=(d, k)) * 3 / np.sqrt(d), rng.normal(size=k) * 0.1)
        Z_eval = rng.uniform(-1, 1, (len(self.Z_eval), d))
        rows = []
        for noise in noises:
            for prot in protections:
                start = time.perf_counter()
                serve = batched_server(head, self.batched, protection(self.batched, prot),
                                       noise_std=noise, rng=rng)
                result = c1_lattice_solve(self.querier, serve, d, k, rng=rng)
                agreement = result.agreement(head, Z_eval)
                ok = agreement >= self.target
                rows.append({"path": "batched", "attack": f"c1 lattice solve (d={d}, K={k} head)",
                             "protection": prot, "logit_noise": noise,
                             "queries_needed": 1 if ok else "", "max_queries": 1,
                             "agreement": agreement,
                             "max_abs_error": result.max_error(head.coef, head.intercept),
                             "solve_consistent": result.consistent,
                             "seconds": round(time.perf_counter() - start, 2),
                             "note": "" if ok else "one request; more give the same solve"})
                print(rows[-1], flush=True)
        return rows

    # -- single -----------------------------------------------------------------------------------
    def single_rows(self, noises: list[float], settings: list[str], max_queries: int) -> list[dict]:
        rows = []
        for noise in noises:
            for name in settings:
                complete, prot = SINGLE_SETTINGS[name]
                start = time.perf_counter()
                plan = SinglePlan(self.d, self.k, self.querier.slots, complete_fold=complete)
                model = SlotModel(plan)
                serve = single_server(self.head, self.single,
                                      protection(self.single, prot),
                                      complete_fold=complete, noise_std=noise, rng=self.rng)
                Z, slots = np.zeros((0, self.d)), np.zeros((0, self.querier.slots))

                def solve(q: int, plan=plan, model=model, serve=serve) -> Recovered:
                    nonlocal Z, slots
                    if q > len(Z):  # ask the provider only for the queries not yet sent
                        more = self.queries(q - len(Z))
                        slots = np.concatenate([slots, single_replies(self.querier, serve, more,
                                                                      self.k)])
                        Z = np.concatenate([Z, more])
                    return slot_solve(plan, Z[:q], slots[:q], model)

                needed, result = self.scan(solve, max_queries)
                rows.append(self.row("single", "slot solve", name, noise, result, needed,
                                     max_queries, time.perf_counter() - start))
                print(rows[-1], flush=True)
                if name == "default":  # the baseline on the same replies' logits
                    start = time.perf_counter()
                    if len(Z) < max_queries:
                        solve(max_queries)
                    L = slots[:, : self.k]
                    needed, result = self.scan(
                        lambda q, Z=Z, L=L: logits_baseline(Z[:q], L[:q]), max_queries)
                    rows.append(self.row("single", "logits baseline", name, noise, result,
                                         needed, max_queries, time.perf_counter() - start))
                    print(rows[-1], flush=True)
        return rows

    # -- fitting ----------------------------------------------------------------------------------
    def fitting_rows(self, n: int, d_in: int, d_out: int, settings: list[str]) -> list[dict]:
        rows = []
        X = self.rng.uniform(-1, 1, (n, d_in))
        Y = self.rng.uniform(-1, 1, (n, d_out)) * 0.3
        for name in settings:
            single_block, prot = FIT_SETTINGS[name]
            start = time.perf_counter()
            packing = CrossProductPacking.plan(n, d_in, d_out, self.querier.slots,
                                               single_block=single_block)
            kit = CkksKit.from_public(self.querier.public_bytes(packing.rotation_steps))
            replies = packing.multiply(kit, packing.encrypt(self.querier, X), Y,
                                       privacy=protection(kit, prot))
            result = cross_product_solve(self.querier, packing, X, replies,
                                         CrossProductModel(packing))
            error = result.max_error(Y)
            within = float((np.abs(result.coef - Y) < 1e-3).mean())
            rows.append({"path": "fitting", "attack": "cross-product solve", "protection": name,
                         "logit_noise": "", "queries_needed": 1 if error < 1e-3 else "",
                         "max_queries": 1, "agreement": "", "max_abs_error": error,
                         "solve_consistent": result.consistent,
                         "seconds": round(time.perf_counter() - start, 2),
                         "note": f"n={n}, d_in={d_in}, d_out={d_out}, block={packing.block}; "
                                 f"{within:.1%} of Y's entries within 1e-3"})
            print(rows[-1], flush=True)
        # Baseline: what the result X̃ᵀY alone gives (the minimum-norm Y).
        Y_hat = np.linalg.pinv(X.T) @ (X.T @ Y)
        rows.append({"path": "fitting", "attack": "result baseline", "protection": "any",
                     "logit_noise": "", "queries_needed": "", "max_queries": 1, "agreement": "",
                     "max_abs_error": float(np.abs(Y_hat - Y).max()), "solve_consistent": False,
                     "seconds": 0.0, "note": "minimum-norm Y from X̃ᵀY"})
        return rows


def _fmt(value, digits: int = 3) -> str:
    if value == "" or value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def findings(rows: list[dict]) -> list[str]:
    """One line per attack: the queries it needed under each protection (per logit noise)."""
    out, order = [], []
    for r in rows:
        key = (r["path"], r["attack"])
        if key not in order:
            order.append(key)
    for path, attack in order:
        per: dict[str, list[str]] = {}
        for r in rows:
            if (r["path"], r["attack"]) == (path, attack):
                needed = r["queries_needed"] if r["queries_needed"] != "" else "not reached"
                noise = "" if r["logit_noise"] == "" else f" (noise {r['logit_noise']:g})"
                per.setdefault(r["protection"], []).append(f"{needed}{noise}")
        parts = "; ".join(f"{prot}: {', '.join(v)}" for prot, v in per.items())
        out.append(f"- **{attack}** ({path}): {parts}")
    return out


NOTES = """\
## Reading the table

- **Re-randomisation** is what stops the c1 solves, the linear one and the lattice one alike: it
  makes the reply's c1 a fresh RLWE sample. The *rescale* rows of the linear c1 solve are no
  protection: the rounding only defeats linear algebra, and the lattice solve (LLL on a
  hidden-number problem, pure Python, hence its small head) recovers V through *rescale* and
  *flood+rescale* alike.
- **Flooding** is what stops the noise solve with a guarantee (2^-40 statistical distance). The
  noise solve also fails after the rescale alone, but only because an honest reply's
  weight-dependent noise is ~2^-25 of the last prime there: a size argument for these parameters,
  not a guarantee.
- **The layouts** stop the slot and cross-product solves: with the fold stopped at the period, or
  several feature blocks per ciphertext, the slots give V (single path) or Y (fitting) whatever
  the circuit privacy (*privacy, partial fold* / *privacy, several blocks* rows). With the complete
  fold / one block they give the logits / X̃ᵀY only: the slot solve then needs exactly what the
  logits baseline needs, and the cross-product solve ends at the minimum-norm Y of the result
  baseline.
- **Logit noise** (`noise_std`, added to c0 as a plaintext) does not stop the c1 solves at all (it
  only costs the intercept a 0.05/√4096 error); it defeats the honest noise solve only because its
  encoding fills every coefficient. Against the logits baseline it costs a few queries.
- **Outside the semi-honest model**: a querier that adds noise of 2^80 to its own all-zero query
  (the *inflated-noise solve*; its ciphertexts decode to slot values of ~1, a request like any
  other) gets V through the default protection: the flooding bound is computed from honest fresh
  noise (σ = 3.2), which the provider cannot check. Closing that needs the querier to prove its
  ciphertexts well formed, or a sanitisation the provider can run without trusting their noise.
"""


def markdown(rows: list[dict], args: argparse.Namespace, command: str, load: tuple,
             seconds: float, out: Path) -> str:
    lines = [
        "# Attacks of a semi-honest querier on the provider's replies\n",
        f"Measured by `{command}` on {platform.node() or 'this machine'} ({os.cpu_count()} cores, "
        f"{platform.processor() or platform.machine()}); load average (1, 5, 15 min) "
        f"{tuple(round(x, 2) for x in load[0])} at the start, "
        f"{tuple(round(x, 2) for x in load[1])} at the end; {seconds:.0f} s in all. "
        "CKKS preset n8192 (chain [60, 60, 38, 60]). Figures: `attacks.csv`.\n",
        f"Head: random V (d={args.d}, K={args.k}, entries N(0, 9/d)) and c (N(0, 0.01)); "
        f"queries uniform in [-1, 1]^d. *queries needed*: the fewest queries (tried: every count "
        f"up to 24, then steps of ~10 %) whose copy agrees with the head's argmax on "
        f"≥ {args.agreement:.0%} of {args.eval} random queries; \"not reached\" within "
        "*max queries*. *consistent*: the attacker's own check of its solve (it knows when it "
        "failed). The batched path's solves are one-shot: one request of one query (the noise "
        "solves: the all-zero query), so they work at 1 or not at all.\n",
        "Protections (`crypto.privacy.CircuitPrivacy`): *off* none; *flood* 40-bit noise flooding "
        "only; *rerandomize* a fresh encryption of zero only; *rescale* the final rescale only; "
        "*flood+rescale* all but re-randomisation; *default* all three. Single path: *off* = "
        "partial fold, no privacy; *privacy, partial fold* = default privacy on the layout that "
        "leaks; *default* = complete fold + default privacy. Fitting: the same with several blocks "
        "per ciphertext vs one.\n",
        "## Queries needed, per protection\n",
        *findings(rows),
        "",
        NOTES,
        "## All figures\n",
        "| path | attack | protection | logit noise | queries needed | max queries | agreement "
        "| max abs error | consistent | s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        needed = r["queries_needed"]
        if needed == "":
            needed = f"not reached within {r['max_queries']}"
        lines.append(
            f"| {r['path']} | {r['attack']} | {r['protection']} | {_fmt(r['logit_noise'])} "
            f"| {needed} | {r['max_queries']} | {_fmt(r['agreement'], 4)} "
            f"| {_fmt(r['max_abs_error'])} | {_fmt(r['solve_consistent'])} | {r['seconds']} |")
    notes = [r for r in rows if r["path"] == "fitting"]
    if notes:
        lines += ["", "Fitting rows (no argmax there): *queries needed* = 1 when one fitting "
                  "request gives every entry of Y within 1e-3. " + " ".join(
                      f"{r['protection']}: {r['note']}." for r in notes)]
    others = sorted(p.parent.name for p in out.glob("*/README.md"))
    if others:
        lines += ["", "Other runs: " + ", ".join(f"[{name}]({name}/README.md)" for name in others)
                  + "."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m simulations.bench_attacks",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--d", type=int, default=32, help="the head's input dimension")
    parser.add_argument("--k", type=int, default=5, help="the head's classes")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.05],
                        help="the provider's logit noise std")
    parser.add_argument("--max-queries", type=int, default=None,
                        help="query limit per attack (default 4(d+1))")
    parser.add_argument("--eval", type=int, default=10_000, help="random queries for agreement")
    parser.add_argument("--agreement", type=float, default=0.95, help="target argmax agreement")
    parser.add_argument("--paths", nargs="+", default=["batched", "single", "fitting"],
                        choices=["batched", "single", "fitting"])
    parser.add_argument("--protections", nargs="+", default=list(PROTECTIONS),
                        choices=list(PROTECTIONS), help="batched path's protection settings")
    parser.add_argument("--lattice", type=int, nargs=2, default=[4, 2], metavar=("D", "K"),
                        help="the small head of the c1 lattice solve (D=0: skip)")
    parser.add_argument("--fit", type=int, nargs=3, default=[100, 24, 16],
                        metavar=("N", "D_IN", "D_OUT"), help="the fitting's shape")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="reports/attacks")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_start, start = os.getloadavg(), time.perf_counter()
    max_queries = args.max_queries or 4 * (args.d + 1)
    bench = Bench(args.d, args.k, args.eval, args.agreement, args.seed)
    rows: list[dict] = []
    if "batched" in args.paths:
        rows += bench.batched_rows(args.noise, args.protections, max_queries)
        if args.lattice[0] > 0:
            rows += bench.lattice_rows(args.noise, args.protections, *args.lattice)
    if "single" in args.paths:
        rows += bench.single_rows(args.noise, list(SINGLE_SETTINGS), max_queries)
    if "fitting" in args.paths:
        rows += bench.fitting_rows(*args.fit, list(FIT_SETTINGS))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "attacks.csv", rows, COLUMNS)
    command = " ".join(["python -m simulations.bench_attacks", *(argv if argv is not None
                                                                   else sys.argv[1:])])
    text = markdown(rows, args, command.strip(), (load_start, os.getloadavg()),
                    time.perf_counter() - start, out)
    (out / "README.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
