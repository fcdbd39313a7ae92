"""Rounds: how the coordinator's requests reach the silos, at most one message per silo per round.

Each pair's part of the protocol is a *conversation*: a generator that yields the requests
(:class:`Ask`) it needs answered next and receives their replies. :meth:`Rounds.converse` runs
many conversations together: every round gathers what all of them ask, sends one message per silo
(a bundle where a silo is asked several things: by several pairs, or by two steps of one pair's
pipeline) and hands each conversation its replies. So a run's number of rounds follows its longest
conversation, not the number of pairs, and silos that are not asked anything are never waited for.

A silo that fails an ask fails only the conversations that asked it; a failure Flower reports
(no reply, node unavailable, ClientApp crashed) gets the same message again, ``retries`` times.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Generator, Hashable
from dataclasses import dataclass, field

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from protocol import (
    BUNDLE,
    SHAREABLE_ACTIONS,
    Action,
    bundle_content,
    content_error,
    error_of,
    error_silo,
    message_type,
    payload_bytes,
    request_content,
    unbundled_replies,
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


def unnamed(node: int) -> str:
    """How a node is named until its silo is known: only a failure that names no silo (no reply,
    or an error Flower made) is reported so."""
    return f"node {node}"


@dataclass
class Ledger:
    """Wall seconds, payload bytes and rounds per phase, for one pair or for the whole run.

    A round that serves several pairs counts its whole wall time for each of them: a pair's
    seconds are how long it waited, not a share of the coordinator's time.
    """

    seconds: dict[str, float] = field(default_factory=dict)
    bytes_sent: dict[str, int] = field(default_factory=dict)
    bytes_received: dict[str, int] = field(default_factory=dict)
    rounds: dict[str, int] = field(default_factory=dict)
    resent: list[str] = field(default_factory=list)  # one entry per resent request: why

    def add(self, phase: str, seconds: float, sent: int, received: int) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds
        self.bytes_sent[phase] = self.bytes_sent.get(phase, 0) + sent
        self.bytes_received[phase] = self.bytes_received.get(phase, 0) + received


@dataclass(frozen=True)
class Ask:
    """One request of a conversation: ``action`` with ``request`` to ``silo``, during ``phase``."""

    silo: Silo
    action: Action
    request: dict
    phase: str


# Yields the asks to answer next (at least one), receives their replies in order, returns a result.
Conversation = Generator[list[Ask], list[ConfigRecord], dict]


class Rounds:
    """Sends asks over ``grid`` in rounds; counts the rounds.

    Parameters
    ----------
    grid : the ServerApp's Grid.
    timeout : seconds to wait for the replies of a round outside serving.
    serve_timeout : seconds to wait for a round of serving asks only.
    retries : resends of a message that got no reply or a Flower error.
    """

    def __init__(self, grid: Grid, *, timeout: float, serve_timeout: float, retries: int) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.grid = grid
        self.timeout = timeout
        self.serve_timeout = serve_timeout
        self.retries = retries
        self.count = 0  # rounds sent, resends included

    def exchange(self, asks: list[Ask], ledgers: list[Ledger]) -> list[ConfigRecord | SiloError]:
        """Answer every ask in one round (plus resends); ``asks[i]`` is accounted in
        ``ledgers[i]``. Identical asks of a shareable action are sent once."""
        if not asks:
            return []
        sends: list[Ask] = []
        index_of: dict[Hashable, int] = {}
        send_of = []
        for ask in asks:
            key = _share_key(ask) if ask.action in SHAREABLE_ACTIONS else None
            if key is None or key not in index_of:
                if key is not None:
                    index_of[key] = len(sends)
                send_of.append(len(sends))
                sends.append(ask)
            else:
                send_of.append(index_of[key])
        by_node: dict[int, list[int]] = {}
        for i, ask in enumerate(sends):
            by_node.setdefault(ask.silo.node_id, []).append(i)
        ledgers_of: dict[int, dict[int, Ledger]] = {}  # the ledgers of each node's asks
        for ask, ledger in zip(asks, ledgers, strict=True):
            ledgers_of.setdefault(ask.silo.node_id, {})[id(ledger)] = ledger
        timeout = max(self.serve_timeout if a.phase == "serve" else self.timeout for a in sends)
        started = time.perf_counter()
        answers = self._deliver({node: [sends[i] for i in idx] for node, idx in by_node.items()},
                                timeout, ledgers_of)
        seconds = time.perf_counter() - started
        results: list[ConfigRecord | SiloError] = [None] * len(sends)  # type: ignore[list-item]
        for node, idx in by_node.items():
            for i, result in zip(idx, answers[node], strict=True):
                results[i] = result
        charged: dict[int, set[str]] = {}
        for ask, ledger, i in zip(asks, ledgers, send_of, strict=True):
            result = results[i]
            received = 0 if isinstance(result, SiloError) else payload_bytes(
                RecordDict({"reply": result}))
            ledger.add(ask.phase, 0.0, payload_bytes(request_content(ask.request)), received)
            if ask.phase not in charged.setdefault(id(ledger), set()):  # once per ledger a round
                charged[id(ledger)].add(ask.phase)
                ledger.seconds[ask.phase] += seconds
                ledger.rounds[ask.phase] = ledger.rounds.get(ask.phase, 0) + 1
        return [results[i] for i in send_of]

    def converse(self, conversations: dict[Hashable, tuple[Conversation, Ledger]]
                 ) -> dict[Hashable, dict | SiloError]:
        """Run the conversations together, a round per step; each one's result or its failure."""
        pending: dict[Hashable, list[Ask]] = {}
        results: dict[Hashable, dict | SiloError] = {}
        for key, (conversation, _) in conversations.items():
            _advance(key, conversation, None, pending, results)
        while pending:
            flat = [(key, ask) for key, asks in pending.items() for ask in asks]
            replies = self.exchange([ask for _, ask in flat],
                                    [conversations[key][1] for key, _ in flat])
            got: dict[Hashable, list] = {}
            for (key, _), reply in zip(flat, replies, strict=True):
                got.setdefault(key, []).append(reply)
            for key, answers in got.items():
                conversation = conversations[key][0]
                failure = next((a for a in answers if isinstance(a, SiloError)), None)
                if failure is not None:
                    conversation.close()
                    del pending[key]
                    results[key] = failure
                else:
                    _advance(key, conversation, answers, pending, results)
        return results

    # -- one round --------------------------------------------------------------------------------
    def _deliver(self, asks_by_node: dict[int, list[Ask]], timeout: float,
                 ledgers_of: dict[int, dict[int, Ledger]]
                 ) -> dict[int, list[ConfigRecord | SiloError]]:
        """Each node's asks in one message; a node whose failure is transient gets its message
        again, up to ``retries`` times."""
        answers = self._send(asks_by_node, timeout)
        for attempt in range(1, self.retries + 1):
            again = {node: asks for node, asks in asks_by_node.items()
                     if _transient(answers[node])}
            if not again:
                break
            for node in again:
                failure = answers[node]
                log.warning("resending %s (attempt %d of %d): %s", failure.action.value,
                            attempt + 1, self.retries + 1, failure)
                for ledger in ledgers_of[node].values():
                    ledger.resent.append(str(failure))
            answers.update(self._send(again, timeout))
        out = {}
        for node, asks in asks_by_node.items():
            answer = answers[node]
            if isinstance(answer, SiloError):
                if answer.transient and self.retries:
                    answer = SiloError(answer.silo, answer.action,
                                       f"{answer.reason} ({self.retries + 1} attempts)",
                                       transient=True)
                out[node] = [answer] * len(asks)
            else:
                out[node] = answer
        return out

    def _send(self, asks_by_node: dict[int, list[Ask]], timeout: float
              ) -> dict[int, list[ConfigRecord | SiloError] | SiloError]:
        """One ``send_and_receive``: per node, the answer to each of its asks, or the one failure
        of its whole message (no reply, or Flower's error)."""
        messages = {}
        for node, asks in asks_by_node.items():
            if len(asks) == 1:
                content = request_content(asks[0].request)
                kind = message_type(asks[0].action)
            else:
                content = bundle_content([(a.action, a.request) for a in asks])
                kind = message_type(BUNDLE)
            messages[node] = Message(content, dst_node_id=node, message_type=kind)
        self.count += 1
        replies_in = self.grid.send_and_receive(list(messages.values()), timeout=timeout)
        # By the request replied to: an error the SuperLink makes (e.g. the node stopped sending
        # heartbeats) comes from the SuperLink's node id, not the silo's.
        node_of = {m.metadata.message_id: node for node, m in messages.items()}
        replies = {node_of.get(m.metadata.reply_to_message_id, m.metadata.src_node_id): m
                   for m in replies_in}
        out: dict[int, list[ConfigRecord | SiloError] | SiloError] = {}
        for node, asks in asks_by_node.items():
            first, reply = asks[0], replies.get(node)
            if reply is None:
                out[node] = SiloError(first.silo.name, first.action,
                                      f"no reply within {timeout:g} s", transient=True)
            elif reply.has_error() or (len(asks) > 1 and "error" in reply.content):
                name = first.silo.name
                if name == unnamed(node):  # before discovery: the silo's own error names it
                    name = error_silo(reply) or name
                out[node] = SiloError(name, first.action, error_of(reply),
                                      transient=reply.has_error())
            else:
                contents = ([reply.content] if len(asks) == 1
                            else unbundled_replies(reply.content, len(asks)))
                out[node] = [_result(ask, content) for ask, content in
                             zip(asks, contents, strict=True)]
        return out


def _result(ask: Ask, content: RecordDict) -> ConfigRecord | SiloError:
    reason = content_error(content)
    if reason is None:
        return content["reply"]
    name = ask.silo.name
    if name == unnamed(ask.silo.node_id) and "silo" in content["error"]:
        name = str(content["error"]["silo"])  # before discovery: the silo's own error names it
    return SiloError(name, ask.action, reason, transient=False)


def _transient(answer) -> bool:
    return isinstance(answer, SiloError) and answer.transient


def _share_key(ask: Ask) -> Hashable:
    return ask.silo.node_id, ask.action, json.dumps(ask.request, sort_keys=True, default=str)


def _advance(key: Hashable, conversation: Conversation, answers: list | None,
             pending: dict[Hashable, list[Ask]], results: dict[Hashable, dict | SiloError]) -> None:
    """Hand a conversation its replies (None: start it); note what it asks next, or its result."""
    try:
        asks = next(conversation) if answers is None else conversation.send(answers)
    except StopIteration as stop:
        pending.pop(key, None)
        results[key] = stop.value
        return
    if not asks:
        raise ValueError(f"conversation {key!r} asked nothing")
    pending[key] = list(asks)
