"""A Grid whose ``send_and_receive`` polls for replies every 0.1 s, in any engine.

Flower 1.41's deployment Grid (``HttpGrid``) sleeps a fixed 3 s between pulls, so every round of the
protocol took a multiple of 3 s; the simulation's in-memory Grid polls every 0.1 s. This wrapper
polls the deployment's SuperLink as often as the simulation does (one small HTTPS request per 0.1 s).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid


class PollingGrid:
    """Delegates to ``grid``; only ``send_and_receive`` is replaced (same semantics, shorter sleep)."""

    def __init__(self, grid: Grid, interval: float = 0.1) -> None:
        self._grid = grid
        self.interval = interval

    def __getattr__(self, name: str):
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> list[Message]:
        pending = set(self._grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending:
            received = list(self._grid.pull_messages(pending))
            replies += received
            pending -= {m.metadata.reply_to_message_id for m in received}
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(self.interval)
        return replies
