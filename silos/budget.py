"""A provider's per-querier query budget, counted in the node's ``context.state``.

What is counted is what the provider computed on, not what the querier claims: a request's
:func:`crypto.query_capacity` (a batched request costs whole groups of N/2 query slots, a
single-path request one per query). The count is charged only when a request is answered — the
ClientApp commits the node's state only for handlers that succeed — and a request that would go
over the budget is refused before any ciphertext is read.
"""

from __future__ import annotations

from flwr.app import RecordDict

from silos.state import put_config

STATE_KEY = "provider.budget"


class QueryBudgetExceeded(PermissionError):
    """The querier has used its query budget on this provider."""


class QueryBudget:
    """``limit`` encrypted query slots per querier (None: unlimited), used counts in ``state``."""

    def __init__(self, state: RecordDict, limit: int | None) -> None:
        if limit is not None and limit < 0:
            raise ValueError(f"the query budget must be >= 0 or None, got {limit}")
        self.state = state
        self.limit = limit

    def used(self, querier: str) -> int:
        record = self.state.get(STATE_KEY, {})
        return int(record.get(querier, 0))

    def check(self, querier: str, cost: int) -> None:
        """Refuse a request of ``cost`` queries that would go over the budget (before computing)."""
        used = self.used(querier)
        if self.limit is not None and used + cost > self.limit:
            raise QueryBudgetExceeded(
                f"querier {querier!r} has used {used} of its {self.limit} encrypted queries on this "
                f"provider (serve.query_budget); this request needs {cost} more")

    def charge(self, querier: str, cost: int) -> int:
        """Count ``cost`` more queries for ``querier`` (refused as by :meth:`check`); returns what
        remains (-1: no limit)."""
        self.check(querier, cost)
        used = self.used(querier) + cost
        put_config(self.state, STATE_KEY, **{querier: used})
        return -1 if self.limit is None else self.limit - used
