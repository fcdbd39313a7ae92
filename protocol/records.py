"""The wire protocol's record conventions: how requests, replies and errors travel.

Every request is a Flower ``query`` message whose content holds one ConfigRecord ``request``; every
reply holds one ConfigRecord ``reply`` or, on failure, a ConfigRecord ``error`` (type + message) so
the coordinator can name what failed while the silo keeps serving. Ciphertexts and public contexts
travel as ``bytes`` / ``list[bytes]`` values; plaintext arrays of a querier never travel at all.

A round carries at most one message per silo. Requests for one silo from several pairs (or from
two steps of one pair's pipeline) travel as a *bundle*, a ``query.bundle`` message: ConfigRecords
``request.0`` … ``request.{n-1}`` and their actions in ``bundle``; the silo answers them in order,
each with ``reply.i`` or ``error.i``, so one request's failure fails only its own pair.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Message, RecordDict

from protocol.actions import Action


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


def bundle_content(requests: list[tuple[Action, dict]]) -> RecordDict:
    """Several requests for one silo in one message, answered in this order."""
    records = {"bundle": ConfigRecord({"actions": [action.value for action, _ in requests]})}
    for i, (_, request) in enumerate(requests):
        records[f"request.{i}"] = ConfigRecord(_without_empty_lists(request))
    return RecordDict(records)


def bundled_requests(content: RecordDict) -> list[tuple[Action, ConfigRecord]]:
    """The (action, request) pairs of a bundle, in order; a malformed bundle is a ValueError."""
    if "bundle" not in content:
        raise ValueError("a bundle message has no 'bundle' record")
    actions = [Action(a) for a in content["bundle"]["actions"]]
    missing = [i for i in range(len(actions)) if f"request.{i}" not in content]
    if missing:
        raise ValueError(f"bundle names {len(actions)} requests but lacks request {missing}")
    return [(action, content[f"request.{i}"]) for i, action in enumerate(actions)]


def bundle_reply(answers: list[RecordDict]) -> RecordDict:
    """The answers (each a ``reply`` or an ``error`` content) of a bundle's requests, in order."""
    records = {}
    for i, answer in enumerate(answers):
        for name, record in answer.items():
            records[f"{name}.{i}"] = record
    return RecordDict(records)


def unbundled_replies(content: RecordDict, n: int) -> list[RecordDict]:
    """A bundle reply split back into ``n`` single-request contents (``reply`` or ``error``)."""
    answers = []
    for i in range(n):
        if f"reply.{i}" in content:
            answers.append(RecordDict({"reply": content[f"reply.{i}"]}))
        elif f"error.{i}" in content:
            answers.append(RecordDict({"error": content[f"error.{i}"]}))
        else:
            answers.append(error_content(ValueError(f"the bundle reply lacks answer {i}")))
    return answers


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
    return content_error(message.content)


def content_error(content: RecordDict) -> str | None:
    """The failure a silo's answer reports (its ``error`` record), else None."""
    if "error" in content:
        record = content["error"]
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
