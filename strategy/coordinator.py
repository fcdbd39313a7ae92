"""AlignmentCoordinator: discover → pair by task → prepare → align → serve, relaying bytes it
cannot read.

It pairs every querier with each provider that offers the querier's task and holds the same public
texts (by digest). For every pair the querier reuses its stored map or fits one under encryption,
then the coordinator routes the querier's encrypted queries to the provider's head for that task
and the encrypted logits back; where several providers serve one task, the querier also gets
their ensemble. It times every phase and counts every payload byte; a silo that fails or does not
answer fails only its own pairs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from flwr.app import ConfigRecord, Message
from flwr.serverapp import Grid
from tqdm.auto import tqdm

from protocol import (
    Action,
    error_of,
    error_silo,
    message_type,
    payload_bytes,
    request_content,
)

log = logging.getLogger(__name__)


class SiloError(RuntimeError):
    """A silo replied with an error, or did not reply in time.

    ``transient``: no reply, or an error Flower made (node unavailable, the ClientApp crashed), which
    a resend may cure; a silo's own error reply is a reasoned refusal and is never resent.
    """

    def __init__(self, silo: str, action: Action, reason: str, *, transient: bool = False) -> None:
        super().__init__(f"silo {silo!r} failed on {action.value!r}: {reason}")
        self.silo = silo
        self.action = action
        self.reason = reason
        self.transient = transient


@dataclass
class Silo:
    node_id: int
    name: str
    role: str
    model: str
    info: dict = field(default_factory=dict)


@dataclass
class Ledger:
    """Wall seconds and payload bytes per phase, for one pair or for the whole run."""

    seconds: dict[str, float] = field(default_factory=dict)
    bytes_sent: dict[str, int] = field(default_factory=dict)
    bytes_received: dict[str, int] = field(default_factory=dict)
    resent: list[str] = field(default_factory=list)  # one entry per resent request: why

    def add(self, phase: str, seconds: float, sent: int, received: int) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds
        self.bytes_sent[phase] = self.bytes_sent.get(phase, 0) + sent
        self.bytes_received[phase] = self.bytes_received.get(phase, 0) + received


class AlignmentCoordinator:
    """Coordinate encrypted alignment and inference between every querier and every provider.

    Parameters
    ----------
    batch_size : queries per encrypted request.
    path_for : the path of a request, from (n_features, n_classes, n queries, whether it is the
        pair's first request, which ships the serving context): the cost model's choice
        (``crypto.cost``), or a fixed path. None: batched.
    timeout : seconds to wait for the replies of one round.
    serve_timeout : seconds to wait for one serving round (encrypt, evaluate, decrypt, report);
        None: ``timeout``. Serving rounds are short, so a silo that stops answering is noticed
        sooner than in the long alignment rounds.
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

    def __init__(self, *, batch_size: int = 4096,
                 path_for: Callable[[int, int, int, bool], str] | None = None,
                 timeout: float = 600.0,
                 serve_timeout: float | None = None, retries: int = 1,
                 min_nodes: int = 2,
                 wait_for_nodes: float = 120.0,
                 pairs: list[tuple[str, str]] | None = None,
                 expected: list[str] | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.path_for = path_for or (lambda d, k, n, first: "batched")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.timeout = timeout
        self.serve_timeout = timeout if serve_timeout is None else serve_timeout
        self.retries = retries
        self.min_nodes = min_nodes
        self.wait_for_nodes = wait_for_nodes
        self.pairs = pairs
        self.expected = expected

    # -- plumbing ---------------------------------------------------------------------------------
    def _round(self, grid: Grid, targets: list[tuple[int, str]], action: Action,
               request: dict, ledger: Ledger, phase: str) -> dict[int, ConfigRecord | SiloError]:
        """Send ``request`` to every (node_id, name) target at once; replies or errors by node.

        Targets whose failure is transient get the request again, up to ``retries`` times.
        """
        results = self._send(grid, targets, action, request, ledger, phase)
        for attempt in range(1, self.retries + 1):
            again = [(node, name) for node, name in targets
                     if isinstance(results[node], SiloError) and results[node].transient]
            if not again:
                break
            for node, _ in again:
                log.warning("resending %s (attempt %d of %d): %s", action.value, attempt + 1,
                            self.retries + 1, results[node])
                ledger.resent.append(str(results[node]))
            results.update(self._send(grid, again, action, request, ledger, phase))
        for node, _ in targets:
            failure = results[node]
            if isinstance(failure, SiloError) and failure.transient and self.retries:
                results[node] = SiloError(failure.silo, action,
                                          f"{failure.reason} ({self.retries + 1} attempts)",
                                          transient=True)
        return results

    def _send(self, grid: Grid, targets: list[tuple[int, str]], action: Action,
              request: dict, ledger: Ledger, phase: str) -> dict[int, ConfigRecord | SiloError]:
        content = request_content(request)
        messages = [Message(content, dst_node_id=node, message_type=message_type(action))
                    for node, _ in targets]
        timeout = self.serve_timeout if phase == "serve" else self.timeout
        start = time.perf_counter()
        answers = grid.send_and_receive(messages, timeout=timeout)
        # By the request replied to: an error the SuperLink makes (e.g. the node stopped sending
        # heartbeats) comes from the SuperLink's node id, not the silo's.
        node_of = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
        replies = {node_of.get(m.metadata.reply_to_message_id, m.metadata.src_node_id): m
                   for m in answers}
        received = sum(payload_bytes(m.content) for m in replies.values() if not m.has_error())
        ledger.add(phase, time.perf_counter() - start, payload_bytes(content) * len(targets),
                   received)
        results: dict[int, ConfigRecord | SiloError] = {}
        for node, name in targets:
            reply = replies.get(node)
            if reply is None:
                results[node] = SiloError(name, action, f"no reply within {timeout:g} s",
                                          transient=True)
            elif (reason := error_of(reply)) is not None:
                # Before discovery a target is only "node <id>": the silo's own error names it.
                if name == _unnamed(node):
                    name = error_silo(reply) or name
                results[node] = SiloError(name, action, reason, transient=reply.has_error())
            else:
                results[node] = reply.content["reply"]
        return results

    def _ask(self, grid: Grid, silo: Silo, action: Action, request: dict, ledger: Ledger,
             phase: str) -> ConfigRecord:
        result = self._round(grid, [(silo.node_id, silo.name)], action, request, ledger,
                             phase)[silo.node_id]
        if isinstance(result, SiloError):
            raise result
        return result

    # -- phases -----------------------------------------------------------------------------------
    def discover(self, grid: Grid, ledger: Ledger) -> tuple[dict[str, Silo], list[str]]:
        deadline = time.monotonic() + self.wait_for_nodes
        nodes = list(grid.get_node_ids())
        while len(nodes) < self.min_nodes and time.monotonic() < deadline:
            time.sleep(1.0)
            nodes = list(grid.get_node_ids())
        results = self._round(grid, [(n, _unnamed(n)) for n in nodes], Action.DESCRIBE, {},
                              ledger, "discover")
        silos, errors, failed = {}, [], set()
        for node, result in results.items():
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

    def prepare(self, grid: Grid, silos: dict[str, Silo], ledger: Ledger) -> list[str]:
        """Every silo of a pair gets ready: a querier embeds its texts and makes this run's keys,
        a provider loads (or trains) a head per task. Returns the errors; failed silos leave."""
        targets = [(s.node_id, s.name) for s in silos.values()]
        results = self._round(grid, targets, Action.PREPARE, {}, ledger, "prepare")
        errors = []
        for silo in list(silos.values()):
            result = results[silo.node_id]
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

    def align(self, grid: Grid, querier: Silo, provider: Silo, ledger: Ledger) -> dict:
        """The querier's map into the provider's space: its stored one if still valid, else
        fitted under encryption. Returns the fit quality and how the map was obtained."""
        restored = self._ask(grid, querier, Action.RESTORE, {
            "provider": provider.name, "provider_fingerprint": provider.info["fingerprint"]},
            ledger, "align")
        if restored["reused"]:
            return {"map": "reused", "map_why": restored["why"], "alpha": restored["alpha"],
                    "r2": restored["r2"], "cosine": restored["cosine"]}
        return {"map": "fitted", "map_why": restored["why"],
                **self.fit(grid, querier, provider, ledger)}

    def fit(self, grid: Grid, querier: Silo, provider: Silo, ledger: Ledger) -> dict:
        """Fit the querier's map into the provider's space under encryption; fit quality."""
        # Enc(X̃) is laid out for the provider's dimension, so it is encrypted per pair.
        upload = self._ask(grid, querier, Action.UPLOAD, {
            "d_out": int(provider.info["prepare_dim"])}, ledger, "align")
        cross = self._ask(grid, provider, Action.CROSS_PRODUCTS, {
            "querier": querier.name, "context": upload["context"], "d_in": upload["d_in"],
            "x_bound": upload["x_bound"], "fit": upload["fit"], "val": upload.get("val", [])},
            ledger, "align")
        select = self._ask(grid, querier, Action.SELECT, {
            "provider": provider.name, "d_out": cross["d_out"], "fit": cross["fit"],
            "val": cross.get("val", []), "y_sq_sum_val": cross.get("y_sq_sum_val", 0.0)},
            ledger, "align")
        products = []
        # The cosine round is optional: asked only of a provider whose policy allows it (the
        # provider refuses it otherwise), else the held-out cosine is NaN.
        if "rows" in select and provider.info.get("allow_cosine", False):
            products = self._ask(grid, provider, Action.COSINE_PRODUCTS, {
                "querier": querier.name, "d_in": upload["d_in"], "rows": select["rows"]},
                ledger, "align")["products"]
        finish = self._ask(grid, querier, Action.FINISH, {
            "provider": provider.name, "d_out": cross["d_out"], "products": products,
            "provider_fingerprint": provider.info["fingerprint"]}, ledger, "align")
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

    def serve(self, grid: Grid, querier: Silo, provider: Silo, ledger: Ledger) -> dict:
        """Route the querier's encrypted queries through the provider's head for the querier's
        task, in batches; only the batches an interrupted run left unanswered are sent."""
        task = str(querier.info["task"])
        n_queries = int(querier.info["n_queries"])
        classes = list(provider.info[f"classes.{task}"])
        serving = {"provider": provider.name, "task": task, "classes": classes,
                   "head": provider.info[f"head.{task}"], "batch_size": self.batch_size}
        plan = self._ask(grid, querier, Action.PLAN, serving, ledger, "serve")
        batches = list(zip(plan.get("starts", []), plan.get("stops", []), strict=True))
        d = int(provider.info["prepare_dim"])
        paths = [self.path_for(d, len(classes), stop - first, i == 0)
                 for i, (first, stop) in enumerate(batches)]
        timing = {"encrypt": 0.0, "evaluate": 0.0, "decrypt": 0.0}
        sent = received = context_bytes = charged = 0
        budget_left = -1
        progress = tqdm(total=n_queries, initial=int(plan["n_done"]), unit="query",
                        desc=f"serve {querier.name} → {provider.name}", mininterval=1.0,
                        disable=not batches)
        for index, ((first, stop), path) in enumerate(zip(batches, paths, strict=True)):
            batch = self._ask(grid, querier, Action.ENCRYPT, {
                "provider": provider.name, "start": first, "stop": stop, "path": path,
                "n_classes": len(classes), "with_context": index == 0,
                "rotations": "single" in paths}, ledger, "serve")
            evaluate = {"querier": querier.name, "task": task, "ciphertexts": batch["ciphertexts"],
                        "path": path, "n": batch["n"]}
            if "context" in batch:  # the serving context replaces the alignment one
                evaluate["context"] = batch["context"]
                context_bytes = len(batch["context"])
            logits = self._ask(grid, provider, Action.EVALUATE, evaluate, ledger, "serve")
            done = self._ask(grid, querier, Action.DECRYPT, {
                **serving, "start": first, "n": batch["n"], "path": path,
                "n_classes": logits["n_classes"], "ciphertexts": logits["ciphertexts"]},
                ledger, "serve")
            sent += sum(len(c) for c in batch["ciphertexts"])
            received += sum(len(c) for c in logits["ciphertexts"])
            timing["encrypt"] += batch["seconds"]
            timing["evaluate"] += logits["seconds"]
            timing["decrypt"] += done["seconds"]
            charged += int(logits.get("charged", 0))
            budget_left = int(logits.get("budget_left", -1))
            progress.update(stop - first)
        progress.close()
        report = self._ask(grid, querier, Action.REPORT, serving, ledger, "serve")
        compute = sum(timing.values())
        served = sum(stop - first for first, stop in batches)
        per = 1000 / max(served, 1)  # milliseconds per query served in this run
        return {
            "task": task, "path": "+".join(sorted(set(paths))) or "—",
            "batch_size": self.batch_size, "n_queries": n_queries, "n_served": served,
            "n_resumed": int(plan["n_done"]),
            **{k: v for k, v in report.items() if k not in ("n",)},
            "latency_ms_per_query": per * compute,
            **{f"{k}_ms_per_query": per * v for k, v in timing.items()},
            "wall_ms_per_query": per * ledger.seconds.get("serve", 0.0),
            "serve_context_bytes": context_bytes,
            "bytes_per_query": (sent + received) / max(served, 1),
            "bytes_in_per_query": sent / max(served, 1),
            "bytes_out_per_query": received / max(served, 1),
            # Query slots the provider counted against the querier's budget (-1 left: no limit).
            "queries_charged": charged, "budget_left": budget_left,
        }

    def ensemble(self, grid: Grid, querier: Silo, task: str, pairs: list[dict],
                 ledger: Ledger) -> dict:
        """The mean probabilities of the providers that served one task, and whether that beats
        the best of them (where the querier's texts are labelled)."""
        providers = [p["provider"] for p in pairs]
        result = {"querier": querier.name, "task": task, "providers": providers}
        try:
            reply = self._ask(grid, querier, Action.ENSEMBLE, {"task": task,
                                                               "providers": providers},
                              ledger, "ensemble")
        except SiloError as err:
            return {**result, "status": "failed", "error": str(err)}
        result.update(status="ok", predictions=reply["predictions"])
        if "encrypted_accuracy" in reply:
            best = max(p["encrypted_accuracy"] for p in pairs)
            result.update(accuracy=reply["encrypted_accuracy"], best_single=best,
                          beats_best=bool(reply["encrypted_accuracy"] > best))
        return result

    # -- the whole run ----------------------------------------------------------------------------
    def start(self, grid: Grid) -> dict:
        run = Ledger()
        started = time.perf_counter()
        silos, errors = self.discover(grid, run)
        pairs, refused, pairing_errors = self.pair_up(silos)
        errors += pairing_errors
        involved = {s.name: s for pair in pairs for s in pair}
        errors += self.prepare(grid, involved, run)  # a silo that fails leaves with its pairs
        pairs = [(q, p) for q, p in pairs if q.name in involved and p.name in involved]
        results = list(refused)
        for querier, provider in pairs:
            ledger = Ledger()
            pair = {"querier": querier.name, "provider": provider.name,
                    "querier_model": querier.model, "provider_model": provider.model,
                    "task": querier.info["task"], "n_queries": querier.info.get("n_queries")}
            try:
                pair.update(self.align(grid, querier, provider, ledger))
                pair.update(self.serve(grid, querier, provider, ledger))
                pair["status"] = "ok"
            except SiloError as err:
                log.error("pair %s → %s failed: %s", querier.name, provider.name, err)
                pair.update(status="failed", error=str(err), failed_silo=err.silo,
                            failed_action=err.action.value)
            pair.update(seconds=ledger.seconds, bytes_sent=ledger.bytes_sent,
                        bytes_received=ledger.bytes_received, resent=ledger.resent)
            results.append(pair)
        ensembles = []
        for querier in {q.name: q for q, _ in pairs}.values():
            served = [p for p in results if p["querier"] == querier.name and p["status"] == "ok"]
            if len(served) > 1:
                ensembles.append(self.ensemble(grid, querier, str(querier.info["task"]), served,
                                               run))
        return {
            "silos": {s.name: {"role": s.role, "model": s.model, "node_id": s.node_id,
                               **_plain(s.info)} for s in silos.values()},
            "pairs": results, "ensembles": ensembles, "errors": errors,
            "seconds": {**run.seconds, "total": time.perf_counter() - started},
        }


def _unnamed(node: int) -> str:
    """How a node is named until its silo is known: only a failure that names no silo (no reply,
    or an error Flower made) is reported so."""
    return f"node {node}"


def _plain(info: dict) -> dict:
    return {k: list(v) if isinstance(v, Iterable) and not isinstance(v, str | bytes) else v
            for k, v in info.items() if not isinstance(v, bytes)}
