"""Plain-text and Markdown tables of per-pair results."""

from __future__ import annotations

COLUMNS = [
    ("querier_model", "querier", "{}"),
    ("provider_model", "provider", "{}"),
    ("task", "task", "{}"),
    ("native_accuracy", "native acc", "{:.3f}"),
    ("plaintext_fit_accuracy", "plain-fit acc", "{:.3f}"),
    ("aligned_accuracy", "aligned acc", "{:.3f}"),
    ("encrypted_accuracy", "encrypted acc", "{:.3f}"),
    ("agreement", "agreement", "{:.4f}"),
    ("max_abs_error", "max |err|", "{:.1e}"),
    ("r2", "held-out R²", "{:.3f}"),
    ("cosine", "cosine", "{:.3f}"),
    ("latency_ms_per_query", "ms/query", "{:.2f}"),
    ("bytes_per_query", "KiB/query", "{}"),
    ("map", "map", "{}"),
    ("status", "status", "{}"),
]


def _cell(pair: dict, key: str, fmt: str) -> str:
    value = pair.get(key)
    if value is None:
        return "—"
    if key == "bytes_per_query":
        return f"{value / 1024:.1f}"
    try:
        return fmt.format(value)
    except (TypeError, ValueError):
        return str(value)


def _rows(pairs: list[dict]) -> tuple[list[str], list[list[str]]]:
    columns = [c for c in COLUMNS if any(c[0] in p for p in pairs)]
    header = [title for _, title, _ in columns]
    return header, [[_cell(p, key, fmt) for key, _, fmt in columns] for p in pairs]


def format_table(pairs: list[dict]) -> str:
    header, rows = _rows(pairs)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def markdown_table(pairs: list[dict]) -> str:
    header, rows = _rows(pairs)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
