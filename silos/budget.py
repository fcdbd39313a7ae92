"""A provider's per-querier query budget, kept on the provider's own disk across runs.

Flower scopes ``context.state`` to one run, so a budget kept there would start afresh with every
run; this one is a JSON file in the provider's state folder (``<state-dir>/budget.json``, by default
its workdir), keyed by the querier's name as the coordinator sends it (``request["querier"]``;
docs/security.md says what that name is worth).

What is counted is what the provider computed on, not what the querier claims: a request's
:func:`crypto.query_capacity` (a batched request costs whole groups of N/2 query slots, a
single-path request one per query). A request that would go over the budget is refused before any
ciphertext is read (:meth:`QueryBudget.check`); it is charged only once answered
(:meth:`QueryBudget.charge`, after the computation), under a lock file and re-checked there, so
two ClientApp processes serving at once can never spend more than the budget between them (the
later one is refused after computing, its logits never sent). Each write replaces the file
atomically and is fsynced: a crash leaves the previous count, never a partial file. An unreadable
file is an error, never a fresh budget.
"""

from __future__ import annotations

import json
from pathlib import Path

from silos.locks import file_lock
from silos.saving import atomic_write

BUDGET_FILE = "budget.json"
FORMAT = "secure-align/query-budget/1"


class QueryBudgetExceeded(PermissionError):
    """The querier has used its query budget on this provider."""


class QueryBudget:
    """``limit`` encrypted query slots per querier (None: unlimited, still counted), the counts
    in ``<state_dir>/budget.json``."""

    def __init__(self, state_dir: str | Path, limit: int | None) -> None:
        if limit is not None and limit < 0:
            raise ValueError(f"the query budget must be >= 0 or None, got {limit}")
        self.path = Path(state_dir) / BUDGET_FILE
        self.lock = self.path.with_name(f".{BUDGET_FILE}.lock")
        self.limit = limit

    def _read(self) -> dict[str, int]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT!r}")
            used = {str(k): int(v) for k, v in data["used"].items()}
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise ValueError(f"the query budget file {self.path} is unreadable ({err}); refusing "
                             "to serve rather than start the budget afresh") from err
        return used

    def _write(self, used: dict[str, int]) -> None:
        text = json.dumps({"format": FORMAT, "used": dict(sorted(used.items()))}, indent=1)
        atomic_write(self.path, lambda tmp: tmp.write_text(text + "\n"))

    def used(self, querier: str) -> int:
        return self._read().get(querier, 0)

    def _refuse_over(self, querier: str, used: int, cost: int) -> None:
        if self.limit is not None and used + cost > self.limit:
            raise QueryBudgetExceeded(
                f"querier {querier!r} has used {used} of its {self.limit} encrypted queries on this "
                f"provider (its policy's query_budget); this request needs {cost} more")

    def check(self, querier: str, cost: int) -> None:
        """Refuse a request of ``cost`` queries that would go over the budget (before computing)."""
        self._refuse_over(querier, self.used(querier), cost)

    def charge(self, querier: str, cost: int) -> int:
        """Count ``cost`` more queries for ``querier`` (refused as by :meth:`check`, under the
        lock); returns what remains (-1: no limit)."""
        if cost < 0:
            raise ValueError(f"a charge must be >= 0, got {cost}")
        with file_lock(self.lock):
            counts = self._read()
            self._refuse_over(querier, counts.get(querier, 0), cost)
            counts[querier] = counts.get(querier, 0) + cost
            self._write(counts)
        return -1 if self.limit is None else self.limit - counts[querier]
