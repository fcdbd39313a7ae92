"""The wire protocol between the coordinator and the silos, on neutral ground: both import it."""

from protocol.actions import PROVIDER_ACTIONS, QUERIER_ACTIONS, ROLES, Action, message_type
from protocol.records import (
    error_content,
    error_of,
    error_silo,
    payload_bytes,
    reply_content,
    request_content,
)

__all__ = ["PROVIDER_ACTIONS", "QUERIER_ACTIONS", "ROLES", "Action", "error_content", "error_of",
           "error_silo", "message_type", "payload_bytes", "reply_content", "request_content"]
