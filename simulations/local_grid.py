"""The coordinator over the silos' own ClientApp in this process: no Ray, no SuperLink. Fast, and
the same code paths as a simulation but the engine (node ids, contexts, the run config); for tests
and benchmarks that count rounds or bytes without an engine's start-up."""

from __future__ import annotations

import shlex
import uuid

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from conf import active_silos, load_config
from simulations.benchmark import benchmark_overrides
from strategy.server_app import run_coordinator


class LocalGrid:
    """One node context per configured silo, node ids unrelated to the silos' order (as in the
    simulation, where partition i runs silo i), each message handled by ``app`` (default: the
    silos' own, with the message log). Counts the rounds and messages it carried."""

    def __init__(self, overrides: list[str], n_silos: int, run_id: int,
                 node_configs: list[dict] | None = None, app: ClientApp | None = None) -> None:
        """``node_configs``: what deployed SuperNodes' --node-config say (default: simulated)."""
        if app is None:
            from silos.client_app import app
        configs = node_configs or [{"partition-id": i, "num-partitions": n_silos}
                                   for i in range(n_silos)]
        self.app = app
        self.round_count = self.message_count = 0
        self.contexts = {
            7_000_000 + 37 * i: Context(
                run_id=run_id, node_id=7_000_000 + 37 * i, node_config=config,
                state=RecordDict(), run_config={"overrides": shlex.join(overrides)})
            for i, config in enumerate(configs)}

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        self.round_count += 1
        replies = []
        for message in messages:
            self.message_count += 1
            message.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # as the SuperLink does
            try:
                replies.append(self.app(message, self.contexts[message.metadata.dst_node_id]))
            except Exception as err:  # as the engines answer a ClientApp that raised
                replies.append(Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                             reason=f"{type(err).__name__}: {err}"),
                                       reply_to=message))
        return replies


def coordinate(overrides: list[str], run_id: int, node_configs: list[dict] | None = None,
               app: ClientApp | None = None) -> dict:
    """A whole run over :class:`LocalGrid` (the benchmark preset applied where it applies), each
    silo logging its messages (``run.message_log``) unless the overrides say otherwise."""
    overrides = ["run.message_log=true", *overrides]
    overrides = [*overrides, *benchmark_overrides(load_config(overrides))]
    cfg = load_config(overrides)
    grid = LocalGrid(overrides, len(active_silos(cfg)), run_id, node_configs, app)
    return run_coordinator(grid, cfg, run_id=run_id)
