"""The wire protocol's record conventions: how requests, replies and errors travel.

Every request is a Flower ``query`` message whose content holds one ConfigRecord ``request``; every
reply holds one ConfigRecord ``reply`` or, on failure, a ConfigRecord ``error`` (type + message) so
the coordinator can name what failed while the silo keeps serving. Ciphertexts and public contexts
travel as ``bytes`` / ``list[bytes]`` values; plaintext arrays of a querier never travel at all.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Message, RecordDict


def request_content(request: dict) -> RecordDict:
    return RecordDict({"request": ConfigRecord(_without_empty_lists(request))})


def reply_content(reply: dict) -> RecordDict:
    return RecordDict({"reply": ConfigRecord(_without_empty_lists(reply))})


def error_content(err: BaseException, *, silo: str | None = None) -> RecordDict:
    """An error reply; ``silo`` names the silo that failed, so that the coordinator can name it
    even before it knows which node is which (a failed ``describe``)."""
    record = {"type": type(err).__name__, "message": str(err)}
    if silo is not None:
        record["silo"] = silo
    return RecordDict({"error": ConfigRecord(record)})


def error_silo(message: Message) -> str | None:
    """The silo an error reply says failed, if it says so (Flower's own errors never do)."""
    if message.has_error() or "error" not in message.content:
        return None
    record = message.content["error"]
    return str(record["silo"]) if "silo" in record else None


def error_of(message: Message) -> str | None:
    """The failure a reply reports (a silo's error record or Flower's own error), else None."""
    if message.has_error():
        return f"flower error {message.error.code}: {message.error.reason}"
    if "error" in message.content:
        record = message.content["error"]
        return f"{record['type']}: {record['message']}"
    return None


def payload_bytes(content: RecordDict) -> int:
    """Bytes of the ciphertexts/contexts a message carries (the protocol's bandwidth)."""
    total = 0
    for record in content.values():
        if isinstance(record, ConfigRecord):
            for value in record.values():
                if isinstance(value, bytes):
                    total += len(value)
                elif isinstance(value, list) and value and isinstance(value[0], bytes):
                    total += sum(len(v) for v in value)
    return total


def _without_empty_lists(values: dict) -> dict:
    # Flower's ConfigRecord cannot size an empty list; an absent key reads as empty on the other side.
    return {k: v for k, v in values.items() if not (isinstance(v, list) and not v)}
