"""SecureAlignmentStrategy: discover → prepare → align → serve, relaying bytes it cannot read.

For every (querier, provider) pair it fits the querier's affine map under encryption, then routes
the querier's encrypted queries to the provider's head and the encrypted logits back. It times every
phase and counts every payload byte; a silo that fails or does not answer fails only its own pairs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import ConfigRecord, Message
from flwr.serverapp import Grid

from strategy.protocol import (
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


class SecureAlignmentStrategy:
    """Coordinate encrypted alignment and inference between every querier and every provider.

    Parameters
    ----------
    batch_size : queries per encrypted request.
    single_max : requests of at most this many queries take the single-query path (one query
        per ciphertext, rotations); larger ones the batched feature-major path (no rotations).
    timeout : seconds to wait for the replies of one round.
    serve_timeout : seconds to wait for one serving round (encrypt, evaluate, decrypt, report);
        None: ``timeout``. Serving rounds are short, so a silo that stops answering is noticed
        sooner than in the long alignment rounds.
    retries : times a request is resent to a silo that did not reply in time or for which Flower
        reported an error (node unavailable, ClientApp crashed) before its pairs fail; a silo's
        own error reply is never resent.
    min_nodes : silos to wait for before starting (deployments connect over time).
    wait_for_nodes : seconds to wait for them.
    pairs : (querier, provider) names to run; None runs every querier with every provider.
    expected : the silos the run config names; one that no node answers for is reported (else its
        pairs would silently not exist), as is a name two nodes claim.
    """

    def __init__(self, *, batch_size: int = 4096, single_max: int = 64, timeout: float = 600.0,
                 serve_timeout: float | None = None, retries: int = 1,
                 min_nodes: int = 2,
                 wait_for_nodes: float = 120.0,
                 pairs: list[tuple[str, str]] | None = None,
                 expected: list[str] | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.single_max = single_max
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
        """Every silo embeds its texts (a provider trains its head); returns the errors."""
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

    def align(self, grid: Grid, querier: Silo, provider: Silo, ledger: Ledger) -> dict:
        """Fit the querier's map into the provider's space under encryption; fit quality."""
        mine, theirs = (s.info.get("prepare_split_sha_public") for s in (querier, provider))
        if mine != theirs:  # row i of X̃ and of Y must be the same public text
            raise SiloError(provider.name, Action.CROSS_PRODUCTS,
                            f"its public texts differ from {querier.name!r}'s ({theirs} vs {mine})")
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
            "provider": provider.name, "d_out": cross["d_out"], "products": products},
            ledger, "align")
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
        """Route the querier's encrypted queries through the provider's head, in batches."""
        n_queries = int(querier.info["n_queries"])
        n_classes = len(provider.info["classes"])
        batches = [(first, min(first + self.batch_size, n_queries))
                   for first in range(0, n_queries, self.batch_size)]
        paths = ["single" if stop - first <= self.single_max else "batched"
                 for first, stop in batches]
        timing = {"encrypt": 0.0, "evaluate": 0.0, "decrypt": 0.0}
        sent = received = context_bytes = charged = 0
        budget_left = -1
        for index, ((first, stop), path) in enumerate(zip(batches, paths, strict=True)):
            batch = self._ask(grid, querier, Action.ENCRYPT, {
                "provider": provider.name, "start": first, "stop": stop, "path": path,
                "n_classes": n_classes, "with_context": index == 0,
                "rotations": "single" in paths}, ledger, "serve")
            evaluate = {"querier": querier.name, "ciphertexts": batch["ciphertexts"],
                        "path": path, "n": batch["n"]}
            if "context" in batch:  # the serving context replaces the alignment one
                evaluate["context"] = batch["context"]
                context_bytes = len(batch["context"])
            logits = self._ask(grid, provider, Action.EVALUATE, evaluate, ledger, "serve")
            done = self._ask(grid, querier, Action.DECRYPT, {
                "provider": provider.name, "start": first, "n": batch["n"], "path": path,
                "n_classes": logits["n_classes"], "ciphertexts": logits["ciphertexts"]},
                ledger, "serve")
            sent += sum(len(c) for c in batch["ciphertexts"])
            received += sum(len(c) for c in logits["ciphertexts"])
            timing["encrypt"] += batch["seconds"]
            timing["evaluate"] += logits["seconds"]
            timing["decrypt"] += done["seconds"]
            charged += int(logits.get("charged", 0))
            budget_left = int(logits.get("budget_left", -1))
        report = self._ask(grid, querier, Action.REPORT, {
            "provider": provider.name, "classes": list(provider.info["classes"])}, ledger,
            "serve")
        compute = sum(timing.values())
        return {
            "path": "+".join(sorted(set(paths))), "batch_size": self.batch_size,
            "n_queries": n_queries,
            "encrypted_accuracy": report["encrypted_accuracy"],
            **{k: v for k, v in report.items() if k.startswith("ood_") or k == "n_ood"},
            "latency_ms_per_query": 1000 * compute / n_queries,
            **{f"{k}_ms_per_query": 1000 * v / n_queries for k, v in timing.items()},
            "wall_ms_per_query": 1000 * ledger.seconds.get("serve", 0.0) / n_queries,
            "serve_context_bytes": context_bytes,
            "bytes_per_query": (sent + received) / n_queries,
            "bytes_in_per_query": sent / n_queries, "bytes_out_per_query": received / n_queries,
            # Query slots the provider counted against the querier's budget (-1 left: no limit).
            "queries_charged": charged, "budget_left": budget_left,
        }

    # -- the whole run ----------------------------------------------------------------------------
    def start(self, grid: Grid) -> dict:
        run = Ledger()
        started = time.perf_counter()
        silos, errors = self.discover(grid, run)
        errors += self.prepare(grid, silos, run)
        ordered = [silos[name] for name in sorted(silos)]
        queriers = [s for s in ordered if s.role == "querier"]
        providers = [s for s in ordered if s.role == "provider"]
        pairs = []
        for querier in queriers:
            for provider in providers:
                if self.pairs is not None and (querier.name, provider.name) not in self.pairs:
                    continue
                ledger = Ledger()
                pair = {"querier": querier.name, "provider": provider.name,
                        "querier_model": querier.model, "provider_model": provider.model,
                        "native_accuracy": provider.info.get("prepare_native_accuracy"),
                        "n_queries": querier.info.get("n_queries")}
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
                pairs.append(pair)
        return {
            "silos": {s.name: {"role": s.role, "model": s.model, "node_id": s.node_id,
                               **_plain(s.info)} for s in silos.values()},
            "pairs": pairs, "errors": errors,
            "seconds": {**run.seconds, "total": time.perf_counter() - started},
        }


def _unnamed(node: int) -> str:
    """How a node is named until its silo is known: only a failure that names no silo (no reply,
    or an error Flower made) is reported so."""
    return f"node {node}"


def _plain(info: dict) -> dict:
    return {k: list(v) if isinstance(v, Iterable) and not isinstance(v, str | bytes) else v
            for k, v in info.items() if not isinstance(v, bytes)}
