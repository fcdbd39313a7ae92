"""The coordinator over the silos' own handler in this process: no Ray, no SuperLink. Fast, and
the same code paths as a simulation but the engine (node ids, contexts, the run config)."""

from __future__ import annotations

import shlex
import uuid
from collections.abc import Callable

from flwr.app import Context, Message, RecordDict

from conf import active_silos, load_config
from protocol import Action, error_content
from silos.client_app import handle
from simulations.benchmark import benchmark_overrides
from strategy.server_app import run_coordinator


class LocalGrid:
    """One node context per configured silo, node ids unrelated to the silos' order (as in the
    simulation, where partition i runs silo i). ``before(action, context)`` runs before each
    message's handler, e.g. to inject a fault."""

    def __init__(self, overrides: list[str], n_silos: int, run_id: int,
                 node_configs: list[dict] | None = None,
                 before: Callable[[Action, Context], None] | None = None) -> None:
        """``node_configs``: what deployed SuperNodes' --node-config say (default: simulated)."""
        configs = node_configs or [{"partition-id": i, "num-partitions": n_silos}
                                   for i in range(n_silos)]
        self.before = before
        self.contexts = {
            7_000_000 + 37 * i: Context(
                run_id=run_id, node_id=7_000_000 + 37 * i, node_config=config,
                state=RecordDict(), run_config={"overrides": shlex.join(overrides)})
            for i, config in enumerate(configs)}

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        replies = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # as the SuperLink does
            action = Action(message.metadata.message_type.removeprefix("query."))
            context = self.contexts[message.metadata.dst_node_id]
            try:
                if self.before is not None:
                    self.before(action, context)
            except Exception as err:  # an injected fault: the silo answers with an error
                replies.append(Message(error_content(err), reply_to=message))
                continue
            replies.append(handle(action, message, context))
        return replies


def coordinate(overrides: list[str], run_id: int, node_configs: list[dict] | None = None,
               before: Callable[[Action, Context], None] | None = None) -> dict:
    """A whole run over :class:`LocalGrid` (the benchmark preset applied where it applies)."""
    overrides = [*overrides, *benchmark_overrides(load_config(overrides))]
    cfg = load_config(overrides)
    grid = LocalGrid(overrides, len(active_silos(cfg)), run_id, node_configs, before)
    return run_coordinator(grid, cfg, run_id=run_id)
