"""Shared helpers of the synthetic benchmarks: tables, JSON output, quiet transformers logging."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def format_rows(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A fixed-width table: one row per dict, floats with 4 decimals."""
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = [title, "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def finish(name: str, results: dict[str, Any], table: str, out: str | None, started: float) -> dict[str, Any]:
    """Print the table, record the wall time and write the JSON (if `out`)."""
    results["benchmark"] = name
    results["seconds"] = round(time.time() - started, 1)
    print(table)
    print(f"({name}: {results['seconds']} s)")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=2))
    return results
