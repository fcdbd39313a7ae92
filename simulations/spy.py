"""A spying ClientApp for simulations: records every message each silo receives and sends.

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

from protocol import Action
from silos.client_app import handle


def _records(content: RecordDict) -> dict[str, dict]:
    return {name: (dict(record) if isinstance(record, ConfigRecord) else record)
            for name, record in content.items()}


def spying_client_app(out_dir: str) -> ClientApp:
    """The silos' ClientApp, recording each message in and out under ``out_dir``."""
    app = ClientApp()

    def register(action: Action) -> None:
        @app.query(action.value)
        def _handler(message: Message, context: Context) -> Message:
            reply = handle(action, message, context)
            entry = {"partition": int(context.node_config.get("partition-id", -1)),
                     "action": action.value, "received": _records(message.content),
                     "sent": {} if reply.has_error() else _records(reply.content)}
            if "querier.he" in context.state:
                entry["secret_key"] = bytes(context.state["querier.he"]["secret_key"])
            path = Path(out_dir)
            path.mkdir(parents=True, exist_ok=True)
            (path / f"{uuid.uuid4().hex}.pkl").write_bytes(pickle.dumps(entry))
            return reply

    for action in Action:
        register(action)
    return app


def load_messages(out_dir: str | Path) -> list[dict]:
    return [pickle.loads(p.read_bytes()) for p in sorted(Path(out_dir).glob("*.pkl"))]
