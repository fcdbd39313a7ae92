"""The wire protocol between the coordinator and the silos, on neutral ground: both import it."""

from protocol.actions import (
    BUNDLE,
    PROVIDER_ACTIONS,
    QUERIER_ACTIONS,
    ROLES,
    SHAREABLE_ACTIONS,
    Action,
    actions_of,
    message_type,
)
from protocol.records import (
    bundle_content,
    bundle_reply,
    bundled_requests,
    content_error,
    error_content,
    error_of,
    error_silo,
    payload_bytes,
    reply_content,
    request_content,
    unbundled_replies,
)

__all__ = ["BUNDLE", "PROVIDER_ACTIONS", "QUERIER_ACTIONS", "ROLES", "SHAREABLE_ACTIONS", "Action",
           "actions_of", "bundle_content", "bundle_reply", "bundled_requests", "content_error",
           "error_content", "error_of", "error_silo", "message_type", "payload_bytes",
           "reply_content", "request_content", "unbundled_replies"]
