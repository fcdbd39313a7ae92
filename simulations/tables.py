"""CSV files of benchmark rows: one writer for every benchmark and the evaluation suite."""

from __future__ import annotations

import csv
from pathlib import Path


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> None:
    """``rows`` as CSV with ``columns`` in that order (default: every scalar key, in the order
    first seen); keys outside them are left out."""
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r
                                     if not isinstance(r[k], list | dict)))
    with Path(path).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
