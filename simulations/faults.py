"""Fault injection for simulations: a ClientApp mod that makes one silo crash or go silent.

A test harness, not part of the protocol: :func:`fault_mod` runs before the silos' handlers, so that
the silo of one partition fails its ``nth`` message of one action (a bundle fails as a whole when
one of its requests strikes, as a crashed process would) — ``raise`` makes the ClientApp raise
(Flower replies with an error of its own, as for a crashed or unavailable node), ``sleep`` makes it
answer only after ``seconds`` (a silo that stops answering until the coordinator gives up). The
count lives in a file under ``state_dir``: simulated silos share worker processes, and a count in a
module global would be per process, not per silo.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable, Mod

from protocol import Action, actions_of
from silos.client_app import client_app
from silos.message_log import message_log


@dataclass(frozen=True)
class Fault:
    """The ``nth`` to ``nth + times - 1``-th ``action`` messages to partition ``partition`` fail."""

    partition: int
    action: Action
    nth: int
    mode: str  # "raise" or "sleep"
    state_dir: str
    seconds: float = 0.0
    times: int = 1

    def __post_init__(self) -> None:
        if self.mode not in ("raise", "sleep"):
            raise ValueError(f"mode must be 'raise' or 'sleep', got {self.mode!r}")

    def count(self) -> int:
        """This message's number among the partition's ``action`` messages (1-based)."""
        path = Path(self.state_dir) / f"{self.partition}-{self.action.value}.count"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a+") as handle_:
            fcntl.flock(handle_, fcntl.LOCK_EX)
            handle_.seek(0)
            n = int(handle_.read() or 0) + 1
            handle_.seek(0)
            handle_.truncate()
            handle_.write(str(n))
        return n

    def strike(self, action: Action, context: Context) -> None:
        if action != self.action or int(context.node_config.get("partition-id", -1)) != self.partition:
            return
        if not self.nth <= self.count() < self.nth + self.times:
            return
        if self.mode == "raise":
            raise RuntimeError(f"injected fault: {action.value} #{self.nth} crashed")
        time.sleep(self.seconds)


def fault_mod(strike: Callable[[Action, Context], None]) -> Mod:
    """A mod that calls ``strike(action, context)`` for each action a message asks for, before
    the handler: an exception it raises is the ClientApp's (Flower's error reply)."""

    def mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        for action in actions_of(message.metadata.message_type, message.content):
            strike(action, context)
        return call_next(message, context)

    return mod


def faulty_client_app(*faults: Fault) -> ClientApp:
    """The silos' ClientApp with ``faults`` injected before the handlers run."""

    def strike(action: Action, context: Context) -> None:
        for fault in faults:
            fault.strike(action, context)

    return client_app(mods=[message_log, fault_mod(strike)])
