"""A spying ClientApp mod for simulations: records every message each silo receives and sends.

A test harness, not part of the protocol: it proves what crosses a silo's boundary. Each message's
records are written to ``out_dir`` in Flower's own wire encoding (the RecordDict protobuf), with a
JSON header, one set of files per message (silos share worker processes); the querier's secret key
is also written there, read from its own node state, so a test can look for it in every message.
Never use it outside a test: it writes the secret key to disk.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

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
        path = Path(out_dir)
        path.mkdir(parents=True, exist_ok=True)
        stem = uuid.uuid4().hex
        header = {"partition": int(context.node_config.get("partition-id", -1)),
                  "action": "+".join(a.value for a in actions)}
        sides = {"received": message.content, "sent": None if reply.has_error() else reply.content}
        for side, content in sides.items():
            if content is not None:
                (path / f"{stem}.{side}.pb").write_bytes(
                    recorddict_to_proto(content).SerializeToString())
        if "querier.he" in context.state:
            (path / f"{stem}.secret_key").write_bytes(
                bytes(context.state["querier.he"]["secret_key"]))
        (path / f"{stem}.json").write_text(json.dumps(header))  # last: the entry is complete
        return reply

    return mod


def spying_client_app(out_dir: str) -> ClientApp:
    """The silos' ClientApp, recording each message in and out under ``out_dir``."""
    return client_app(mods=[message_log, spy_mod(out_dir)])


def load_messages(out_dir: str | Path) -> list[dict]:
    """Every recorded message: partition, action, received and sent records, and the querier's
    secret key where the silo held one."""
    entries = []
    for header in sorted(Path(out_dir).glob("*.json")):
        entry = json.loads(header.read_text())
        for side in ("received", "sent"):
            blob = header.with_suffix(f".{side}.pb")
            entry[side] = _records(recorddict_from_proto(ProtoRecordDict.FromString(
                blob.read_bytes()))) if blob.exists() else {}
        key = header.with_suffix(".secret_key")
        if key.exists():
            entry["secret_key"] = key.read_bytes()
        entries.append(entry)
    return entries
