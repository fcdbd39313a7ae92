"""The silo's Flower ClientApp: one ``@app.query`` handler per protocol action, and one for a bundle
of them (several requests for this silo in one round, answered in order).

A handler resolves this node's silo from the run config (``overrides``) and node config, runs the
role's method on the node's ``context.state``, and replies. Any failure becomes an ``error`` reply
naming it; the node's state is only updated by requests that succeed, so the silo keeps serving.
Cross-cutting concerns are mods (``client_app(mods=...)``): the product's app carries only the
message log, which does nothing unless ``run.message_log`` is on.
"""

from __future__ import annotations

import logging
import os

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from protocol import (
    BUNDLE,
    PROVIDER_ACTIONS,
    QUERIER_ACTIONS,
    Action,
    bundle_reply,
    bundled_requests,
    error_content,
    reply_content,
)
from silos.message_log import message_log
from silos.provider import Provider
from silos.querier import Querier
from silos.settings import node_settings, run_config, silo_name

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models come from installed packages or local paths
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

log = logging.getLogger(__name__)


def answer(action: Action, request: ConfigRecord | None, context: Context) -> RecordDict:
    """This silo's answer to one request: a ``reply`` content, or an ``error`` one naming why."""
    name = _claimed_name(context)
    try:
        cfg = run_config(context)
        name = _name_or(cfg, dict(context.node_config), name)
        settings = node_settings(cfg, dict(context.node_config))
        allowed = QUERIER_ACTIONS if settings.role == "querier" else PROVIDER_ACTIONS
        if action not in allowed:
            raise PermissionError(f"silo {settings.name!r} ({settings.role}) does not handle "
                                  f"{action.value!r}")
        if request is None:
            raise ValueError("message has no 'request' record")
        role = Querier if settings.role == "querier" else Provider
        # Work on a copy: a failing handler must leave the node's state as it was.
        state = context.state.copy()
        reply = getattr(role(settings, state), action.value)(request)
        context.state.clear()
        context.state.update(state)
        return reply_content(reply)
    except Exception as err:  # reported to the coordinator; the silo keeps serving
        log.exception("silo failed on %s", action.value)
        return error_content(err, silo=name)


def handle(action: Action, message: Message, context: Context) -> Message:
    """One request's message, answered."""
    request = message.content.get("request")
    return Message(answer(action, request, context), reply_to=message)


def handle_bundle(message: Message, context: Context) -> Message:
    """A bundle's requests, answered in order; one that fails fails alone."""
    try:
        requests = bundled_requests(message.content)
    except (ValueError, KeyError) as err:
        return Message(error_content(err, silo=_claimed_name(context)), reply_to=message)
    return Message(bundle_reply([answer(action, request, context)
                                 for action, request in requests]), reply_to=message)


def _claimed_name(context: Context) -> str | None:
    """The silo a deployed node says it is, before any config is read (so even a config that
    does not load can be reported under the silo's name rather than its node id)."""
    claimed = context.node_config.get("silo")
    return None if claimed is None else str(claimed)


def _name_or(cfg, node_config: dict, fallback: str | None) -> str | None:
    """This node's silo name (a simulated node's from its partition id), else ``fallback``."""
    try:
        return silo_name(cfg, node_config)
    except (KeyError, ValueError, TypeError):
        return fallback


def client_app(mods: list[Mod] | None = None) -> ClientApp:
    """The silos' ClientApp with ``mods`` around every handler (outermost first)."""
    built = ClientApp(mods=list(mods or []))

    def register(action: Action) -> None:
        @built.query(action.value)
        def _handler(message: Message, context: Context) -> Message:
            return handle(action, message, context)

    for action in Action:
        register(action)
    built.query(BUNDLE)(handle_bundle)
    return built


app = client_app(mods=[message_log])
