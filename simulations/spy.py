"""A spying ClientApp mod for simulations: records every message each silo receives and sends.

A test harness, not part of the protocol: it proves what crosses a silo's boundary. Each message is
pickled to ``out_dir`` (one file per message: silos share worker processes); the querier's secret
key is also written there, read from its own node state, so a test can look for it in every
message. Never use it outside a test: it writes the secret key to disk.
"""

from __future__ import annotations

import pickle
import uuid
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable, Mod

from protocol import actions_of
from silos.client_app import client_app
from silos.message_log import message_log


def _records(content: RecordDict) -> dict[str, dict]:
    return {name: (dict(record) if isinstance(record, ConfigRecord) else record)
            for name, record in content.items()}


def spy_mod(out_dir: str) -> Mod:
    """A mod recording each message in and out under ``out_dir`` (a bundle as one entry, its
    actions joined with '+')."""

    def mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(message, context)
        actions = actions_of(message.metadata.message_type, message.content)
        entry = {"partition": int(context.node_config.get("partition-id", -1)),
                 "action": "+".join(a.value for a in actions),
                 "received": _records(message.content),
                 "sent": {} if reply.has_error() else _records(reply.content)}
        if "querier.he" in context.state:
            entry["secret_key"] = bytes(context.state["querier.he"]["secret_key"])
        path = Path(out_dir)
        path.mkdir(parents=True, exist_ok=True)
        (path / f"{uuid.uuid4().hex}.pkl").write_bytes(pickle.dumps(entry))
        return reply

    return mod


def spying_client_app(out_dir: str) -> ClientApp:
    """The silos' ClientApp, recording each message in and out under ``out_dir``."""
    return client_app(mods=[message_log, spy_mod(out_dir)])


def load_messages(out_dir: str | Path) -> list[dict]:
    return [pickle.loads(p.read_bytes()) for p in sorted(Path(out_dir).glob("*.pkl"))]
