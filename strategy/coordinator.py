"""AlignmentCoordinator: discover → pair by task → prepare → align → serve, relaying bytes it
cannot read.

It pairs every querier with each provider that offers the querier's task and holds the same public
texts (by digest). For every pair the querier reuses its stored map or fits one under encryption,
then the coordinator routes the querier's encrypted queries to the provider's head for that task
and the encrypted logits back; where several providers serve one task, the querier also gets
their ensemble. Every pair runs at once (``strategy.rounds``): a round carries each pair's next
step, so providers work side by side and the run's rounds do not grow with the number of pairs.
Serving is pipelined: the decryption of batch b and the encryption of batch b+1 travel in one
round, so a stream of batches costs two rounds a batch. It times every phase and counts every
payload byte and round; a silo that fails or does not answer fails only its own pairs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from flwr.serverapp import Grid
from omegaconf import DictConfig
from tqdm.auto import tqdm

from conf import active_silos, parse_pairs
from protocol import Action
from strategy.rounds import Ask, Conversation, Ledger, Rounds, Silo, SiloError, unnamed

log = logging.getLogger(__name__)

__all__ = ["AlignmentCoordinator", "Ledger", "Silo", "SiloError"]


class AlignmentCoordinator:
    """Coordinate encrypted alignment and inference between every querier and every provider.

    One method per phase: :meth:`discover`, :meth:`pair_up`, :meth:`prepare`, then, per pair, the
    conversations :meth:`align` and :meth:`serve`, and :meth:`ensemble`; :meth:`start` runs them.
    Defaults live in conf/default.yaml (:meth:`from_config`).

    Parameters
    ----------
    batch_size : queries per encrypted request.
    path_for : the path of a request, from (n_features, n_classes, n queries, whether it is the
        pair's first request, which ships the serving context): the cost model's choice
        (``crypto.cost``), or a fixed path.
    timeout : seconds to wait for the replies of a round outside serving.
    serve_timeout : seconds to wait for a serving round. Serving rounds are short, so a silo that
        stops answering is noticed sooner than in the long alignment rounds.
    retries : times a request is resent to a silo that did not reply in time or for which Flower
        reported an error (node unavailable, ClientApp crashed) before its pairs fail; a silo's
        own error reply is never resent.
    min_nodes : silos to wait for before starting (deployments connect over time).
    wait_for_nodes : seconds to wait for them.
    pairs : (querier, provider) names to run; None runs every querier with every provider that
        offers the querier's task.
    expected : the silos the run config names; one that no node answers for is reported (else its
        pairs would silently not exist), as is a name two nodes claim.
    """

    def __init__(self, *, batch_size: int, path_for: Callable[[int, int, int, bool], str],
                 timeout: float, serve_timeout: float, retries: int, min_nodes: int,
                 wait_for_nodes: float, pairs: list[tuple[str, str]] | None = None,
                 expected: list[str] | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.batch_size = batch_size
        self.path_for = path_for
        self.timeout = timeout
        self.serve_timeout = serve_timeout
        self.retries = retries
        self.min_nodes = min_nodes
        self.wait_for_nodes = wait_for_nodes
        self.pairs = pairs
        self.expected = expected

    @classmethod
    def from_config(cls, cfg: DictConfig, path_for: Callable[[int, int, int, bool], str]
                    ) -> AlignmentCoordinator:
        """The coordinator a run config describes (``serve.*``, ``coordinator.*``, ``pairs``)."""
        c = cfg.coordinator
        return cls(batch_size=int(cfg.serve.batch_size), path_for=path_for,
                   timeout=float(c.timeout), serve_timeout=float(c.serve_timeout),
                   retries=int(c.retries), min_nodes=len(active_silos(cfg)),
                   wait_for_nodes=float(c.wait_for_nodes), pairs=parse_pairs(cfg.pairs),
                   expected=list(active_silos(cfg)))

    def rounds(self, grid: Grid) -> Rounds:
        return Rounds(grid, timeout=self.timeout, serve_timeout=self.serve_timeout,
                      retries=self.retries)

    # -- phases -----------------------------------------------------------------------------------
    def discover(self, rounds: Rounds, ledger: Ledger) -> tuple[dict[str, Silo], list[str]]:
        deadline = time.monotonic() + self.wait_for_nodes
        nodes = list(rounds.grid.get_node_ids())
        while len(nodes) < self.min_nodes and time.monotonic() < deadline:
            time.sleep(1.0)
            nodes = list(rounds.grid.get_node_ids())
        asks = [Ask(Silo(n, unnamed(n), "", ""), Action.DESCRIBE, {}, "discover") for n in nodes]
        results = rounds.exchange(asks, [ledger] * len(asks))
        silos, errors, failed = {}, [], set()
        for node, result in zip(nodes, results, strict=True):
            if isinstance(result, SiloError):
                errors.append(str(result))
                failed.add(result.silo)
                continue
            info = dict(result)
            name = str(info["silo"])
            if name in silos:  # two SuperNodes with the same silo= in their node config
                errors.append(f"nodes {silos[name].node_id} and {node} both run silo {name!r}; "
                              f"node {node} is left out (check each SuperNode's --node-config)")
                continue
            silos[name] = Silo(node, name, str(info["role"]), str(info["model"]), info)
        for name in self.expected or []:
            if name not in silos and name not in failed:
                errors.append(f"silo {name!r} (in the run config) did not answer: none of the "
                              f"{len(nodes)} connected node(s) answered as {name!r}; a deployed "
                              f"SuperNode names its silo with --node-config 'silo=\"{name}\"'")
        return silos, errors

    def prepare(self, rounds: Rounds, silos: dict[str, Silo], ledger: Ledger) -> list[str]:
        """Every silo of a pair gets ready: a querier embeds its texts and makes this run's keys,
        a provider loads (or trains) a head per task. Returns the errors; failed silos leave."""
        order = list(silos.values())
        results = rounds.exchange([Ask(s, Action.PREPARE, {}, "prepare") for s in order],
                                  [ledger] * len(order))
        errors = []
        for silo, result in zip(order, results, strict=True):
            if isinstance(result, SiloError):
                errors.append(str(result))
                del silos[silo.name]
            else:
                silo.info.update({f"prepare_{k}": v for k, v in result.items()})
        return errors

    def pair_up(self, silos: dict[str, Silo]) -> tuple[list[tuple[Silo, Silo]], list[dict],
                                                       list[str]]:
        """Each querier with every provider that offers its task (and, with ``pairs``, is
        listed): the pairs to run, the pairs refused (their public texts differ) and errors (a task
        no provider offers)."""
        ordered = [silos[name] for name in sorted(silos)]
        providers = [s for s in ordered if s.role == "provider"]
        pairs, refused, errors = [], [], []
        for querier in (s for s in ordered if s.role == "querier"):
            task = str(querier.info["task"])
            listed = [p for p in providers
                      if self.pairs is None or (querier.name, p.name) in self.pairs]
            offering = [p for p in listed if task in p.info.get("tasks", [])]
            for provider in listed:
                if provider not in offering and self.pairs is not None:
                    errors.append(f"pair {querier.name}:{provider.name}: provider "
                                  f"{provider.name!r} does not offer task {task!r} (it offers "
                                  f"{list(provider.info.get('tasks', []))})")
            if not offering:
                offered = "; ".join(f"{p.name}: {list(p.info.get('tasks', []))}"
                                    for p in providers) or "no provider answered"
                errors.append(f"querier {querier.name!r} asks for task {task!r}, which no "
                              f"provider offers ({offered}); set silos.{querier.name}.task")
            for provider in offering:
                mine, theirs = querier.info["public_digest"], provider.info["public_digest"]
                if mine != theirs:  # row i of X̃ and of Y must be the same public text
                    refused.append({
                        "querier": querier.name, "provider": provider.name, "task": task,
                        "querier_model": querier.model, "provider_model": provider.model,
                        "status": "failed", "failed_silo": provider.name,
                        "failed_action": Action.DESCRIBE.value,
                        "error": f"the public texts differ: {querier.name!r} holds sha256 {mine}, "
                                 f"{provider.name!r} holds sha256 {theirs} (each silo must hold "
                                 "the same public corpus, in the same order)"})
                else:
                    pairs.append((querier, provider))
        return pairs, refused, errors

    def align(self, querier: Silo, provider: Silo) -> Conversation:
        """The querier's map into the provider's space: its stored one if still valid, else
        fitted under encryption. Returns the fit quality and how the map was obtained."""
        (restored,) = yield [Ask(querier, Action.RESTORE, {
            "provider": provider.name, "provider_fingerprint": provider.info["fingerprint"]},
            "align")]
        if restored["reused"]:
            return {"map": "reused", "map_why": restored["why"], "alpha": restored["alpha"],
                    "r2": restored["r2"], "cosine": restored["cosine"]}
        fitted = yield from self.fit(querier, provider)
        return {"map": "fitted", "map_why": restored["why"], **fitted}

    def fit(self, querier: Silo, provider: Silo) -> Conversation:
        """Fit the querier's map into the provider's space under encryption; fit quality."""
        # Enc(X̃) is laid out for the provider's dimension: providers of one dimension share it.
        (upload,) = yield [Ask(querier, Action.UPLOAD, {
            "d_out": int(provider.info["prepare_dim"])}, "align")]
        (cross,) = yield [Ask(provider, Action.CROSS_PRODUCTS, {
            "querier": querier.name, "context": upload["context"], "d_in": upload["d_in"],
            "x_bound": upload["x_bound"], "fit": upload["fit"], "val": upload.get("val", [])},
            "align")]
        (select,) = yield [Ask(querier, Action.SELECT, {
            "provider": provider.name, "d_out": cross["d_out"], "fit": cross["fit"],
            "val": cross.get("val", []), "y_sq_sum_val": cross.get("y_sq_sum_val", 0.0)},
            "align")]
        products = []
        # The cosine round is optional: asked only of a provider whose policy allows it (the
        # provider refuses it otherwise), else the held-out cosine is NaN.
        if "rows" in select and provider.info.get("allow_cosine", False):
            (cosine,) = yield [Ask(provider, Action.COSINE_PRODUCTS, {
                "querier": querier.name, "d_in": upload["d_in"], "rows": select["rows"]},
                "align")]
            products = cosine["products"]
        (finish,) = yield [Ask(querier, Action.FINISH, {
            "provider": provider.name, "d_out": cross["d_out"], "products": products,
            "provider_fingerprint": provider.info["fingerprint"]}, "align")]
        return {
            "alpha": finish["alpha"], "r2": finish["r2"], "cosine": finish["cosine"],
            "r2_by_alpha": dict(zip(select.get("alphas", []), select.get("r2_by_alpha", []),
                                    strict=True)),
            "d_querier": int(upload["d_in"]) - 1, "d_provider": int(cross["d_out"]),
            "context_bytes": len(upload["context"]),
            "silo_seconds": (upload["seconds"] + cross["seconds"] + select["seconds"]
                             + finish["seconds"]),
            "align_bytes_up": sum(len(b) for b in upload["fit"]) + sum(
                len(b) for b in upload.get("val", [])),
        }

    def serve(self, querier: Silo, provider: Silo) -> Conversation:
        """Route the querier's encrypted queries through the provider's head for the querier's
        task, in batches; only the batches an interrupted run left unanswered are sent.

        Pipelined: after the first batch, each querier round decrypts batch b and encrypts
        batch b+1 (a bundle), and the last one decrypts and writes the predictions."""
        task = str(querier.info["task"])
        n_queries = int(querier.info["n_queries"])
        classes = list(provider.info[f"classes.{task}"])
        serving = {"provider": provider.name, "task": task, "classes": classes,
                   "head": provider.info[f"head.{task}"], "batch_size": self.batch_size}
        (plan,) = yield [Ask(querier, Action.PLAN, serving, "serve")]
        batches = list(zip(plan.get("starts", []), plan.get("stops", []), strict=True))
        d = int(provider.info["prepare_dim"])
        paths = [self.path_for(d, len(classes), stop - first, i == 0)
                 for i, (first, stop) in enumerate(batches)]

        def encrypt(i: int) -> Ask:
            first, stop = batches[i]
            return Ask(querier, Action.ENCRYPT, {
                "provider": provider.name, "start": first, "stop": stop, "path": paths[i],
                "n_classes": len(classes), "with_context": i == 0,
                "rotations": "single" in paths}, "serve")

        report_ask = Ask(querier, Action.REPORT, serving, "serve")
        timing = {"encrypt": 0.0, "evaluate": 0.0, "decrypt": 0.0}
        sent = received = context_bytes = charged = 0
        budget_left = -1
        progress = tqdm(total=n_queries, initial=int(plan["n_done"]), unit="query",
                        desc=f"serve {querier.name} → {provider.name}", mininterval=1.0,
                        disable=not batches)
        if batches:
            (batch,) = yield [encrypt(0)]
        else:
            (report,) = yield [report_ask]
        for i, (first, stop) in enumerate(batches):
            evaluate = {"querier": querier.name, "task": task, "ciphertexts": batch["ciphertexts"],
                        "path": paths[i], "n": batch["n"]}
            if "context" in batch:  # the serving context replaces the alignment one
                evaluate["context"] = batch["context"]
                context_bytes = len(batch["context"])
            (logits,) = yield [Ask(provider, Action.EVALUATE, evaluate, "serve")]
            decrypt = Ask(querier, Action.DECRYPT, {
                **serving, "start": first, "n": batch["n"], "path": paths[i],
                "n_classes": logits["n_classes"], "ciphertexts": logits["ciphertexts"]}, "serve")
            last = i + 1 == len(batches)
            done, after = yield [decrypt, report_ask if last else encrypt(i + 1)]
            sent += sum(len(c) for c in batch["ciphertexts"])
            received += sum(len(c) for c in logits["ciphertexts"])
            timing["encrypt"] += batch["seconds"]
            timing["evaluate"] += logits["seconds"]
            timing["decrypt"] += done["seconds"]
            charged += int(logits.get("charged", 0))
            budget_left = int(logits.get("budget_left", -1))
            progress.update(stop - first)
            if last:
                report = after
            else:
                batch = after
        progress.close()
        compute = sum(timing.values())
        served = sum(stop - first for first, stop in batches)
        per = 1000 / max(served, 1)  # milliseconds per query served in this run
        return {
            "task": task, "path": "+".join(sorted(set(paths))) or "—",
            "batch_size": self.batch_size, "n_queries": n_queries, "n_served": served,
            "n_resumed": int(plan["n_done"]), "n_batches": len(batches),
            **{k: v for k, v in report.items() if k not in ("n",)},
            "latency_ms_per_query": per * compute,
            **{f"{k}_ms_per_query": per * v for k, v in timing.items()},
            "serve_context_bytes": context_bytes,
            "bytes_per_query": (sent + received) / max(served, 1),
            "bytes_in_per_query": sent / max(served, 1),
            "bytes_out_per_query": received / max(served, 1),
            # Query slots the provider counted against the querier's budget (-1 left: no limit).
            "queries_charged": charged, "budget_left": budget_left,
        }

    def ensemble(self, querier: Silo, task: str, pairs: list[dict]) -> Conversation:
        """The mean probabilities of the providers that served one task, and whether that beats
        the best of them (where the querier's texts are labelled)."""
        providers = [p["provider"] for p in pairs]
        (reply,) = yield [Ask(querier, Action.ENSEMBLE, {"task": task, "providers": providers},
                              "ensemble")]
        result = {"querier": querier.name, "task": task, "providers": providers, "status": "ok",
                  "predictions": reply["predictions"]}
        if "encrypted_accuracy" in reply:
            best = max(p["encrypted_accuracy"] for p in pairs)
            result.update(accuracy=reply["encrypted_accuracy"], best_single=best,
                          beats_best=bool(reply["encrypted_accuracy"] > best))
        return result

    def pair(self, querier: Silo, provider: Silo) -> Conversation:
        """One pair's whole conversation: align, then serve."""
        aligned = yield from self.align(querier, provider)
        served = yield from self.serve(querier, provider)
        return {**aligned, **served}

    # -- the whole run ----------------------------------------------------------------------------
    def start(self, grid: Grid) -> dict:
        rounds = self.rounds(grid)
        run = Ledger()
        started = time.perf_counter()
        silos, errors = self.discover(rounds, run)
        pairs, refused, pairing_errors = self.pair_up(silos)
        errors += pairing_errors
        involved = {s.name: s for pair in pairs for s in pair}
        errors += self.prepare(rounds, involved, run)  # a silo that fails leaves with its pairs
        pairs = [(q, p) for q, p in pairs if q.name in involved and p.name in involved]
        ledgers = {(q.name, p.name): Ledger() for q, p in pairs}
        pair_rounds, pairs_started = rounds.count, time.perf_counter()
        outcomes = rounds.converse({(q.name, p.name): (self.pair(q, p), ledgers[q.name, p.name])
                                    for q, p in pairs})
        pair_rounds, pairs_seconds = rounds.count - pair_rounds, time.perf_counter() - pairs_started
        results = list(refused)
        for querier, provider in pairs:
            ledger, outcome = ledgers[querier.name, provider.name], outcomes[querier.name,
                                                                              provider.name]
            pair = {"querier": querier.name, "provider": provider.name,
                    "querier_model": querier.model, "provider_model": provider.model,
                    "task": querier.info["task"], "n_queries": querier.info.get("n_queries")}
            if isinstance(outcome, SiloError):
                log.error("pair %s → %s failed: %s", querier.name, provider.name, outcome)
                pair.update(status="failed", error=str(outcome), failed_silo=outcome.silo,
                            failed_action=outcome.action.value)
            else:
                pair.update(outcome, status="ok")
                served = max(int(outcome["n_served"]), 1)
                pair["wall_ms_per_query"] = 1000 * ledger.seconds.get("serve", 0.0) / served
            pair.update(seconds=ledger.seconds, bytes_sent=ledger.bytes_sent,
                        bytes_received=ledger.bytes_received, rounds=ledger.rounds,
                        resent=ledger.resent)
            results.append(pair)
        ensembles = []
        by_querier = {q.name: q for q, _ in pairs}
        wanted = {}
        for querier in by_querier.values():
            served = [p for p in results if p["querier"] == querier.name and p["status"] == "ok"]
            if len(served) > 1:
                wanted[querier.name] = (self.ensemble(querier, str(querier.info["task"]), served),
                                        run)
        for name, outcome in rounds.converse(wanted).items():
            querier = by_querier[name]
            if isinstance(outcome, SiloError):
                outcome = {"querier": name, "task": str(querier.info["task"]),
                           "providers": [p["provider"] for p in results
                                         if p["querier"] == name and p["status"] == "ok"],
                           "status": "failed", "error": str(outcome)}
            ensembles.append(outcome)
        return {
            "silos": {s.name: {"role": s.role, "model": s.model, "node_id": s.node_id,
                               **_plain(s.info)} for s in silos.values()},
            "pairs": results, "ensembles": ensembles, "errors": errors,
            # pairs: the wall time of every pair's alignment and serving, run together
            "seconds": {**run.seconds, "pairs": pairs_seconds,
                        "total": time.perf_counter() - started},
            "rounds": {"total": rounds.count, "pairs": pair_rounds, **run.rounds},
        }


def _plain(info: dict) -> dict:
    return {k: list(v) if isinstance(v, Iterable) and not isinstance(v, str | bytes) else v
            for k, v in info.items() if not isinstance(v, bytes)}
